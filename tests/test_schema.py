"""Models, migrations, grants, the connect evidence line, TLS/SCRAM enforcement."""

import json
import logging

import psycopg2
import pytest
from sqlalchemy import text

from conftest import query
from litellm_pglog.config import Settings
from litellm_pglog.engine import PoolStats, make_engine
from litellm_pglog.schema import SchemaMismatch, check_revision, code_head, migrate
from pgcluster import DB, OWNER, OWNER_PW, WRITER, WRITER_PW


def columns(cluster, table):
    return query(cluster, "SELECT column_name, data_type FROM information_schema.columns"
                          " WHERE table_name = %s ORDER BY ordinal_position", (table,))


def test_first_migrate_changed_then_idempotent(cluster, migrated):
    assert migrated["changed"] is True and migrated["revision"] == code_head()
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
    again = migrate(engine, WRITER)
    engine.dispose()
    assert again == {"changed": False, "revision": code_head(), "previous_revision": code_head(), "granted": []}


def test_tables_have_the_documented_columns(cluster, migrated):
    req = columns(cluster, "requests")
    resp = columns(cluster, "responses")
    assert [c for c, _ in req] == ["id", "call_id", "created_at", "logged_at", "model", "call_type", "stream",
                                   "api_key_hash", "end_user", "tags", "payload"]
    assert [c for c, _ in resp] == ["id", "request_id", "created_at", "status", "prompt_tokens",
                                    "completion_tokens", "total_tokens", "cost_usd", "latency_ms", "body"]
    assert dict(req)["payload"] == "jsonb" and dict(req)["id"] == "bigint"
    fk = query(cluster, "SELECT confdeltype FROM pg_constraint WHERE conname = 'fk_responses_request_id'")
    assert fk == [("c",)]  # ON DELETE CASCADE
    idx = {r[0] for r in query(cluster, "SELECT indexname FROM pg_indexes WHERE tablename IN ('requests','responses')")}
    assert {"ix_requests_created_at", "ix_requests_model", "ix_responses_request_id",
            "ix_responses_created_at", "uq_requests_call_id"} <= idx


def test_models_match_migration(cluster, migrated):
    """Alembic autogenerate against the migrated DB finds no difference to the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from litellm_pglog.models import Base

    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_writer_role_is_least_privilege(clean_db):
    conn = psycopg2.connect(host="localhost", port=clean_db.port, dbname=DB, user=WRITER, password=WRITER_PW,
                            sslmode="verify-full", sslrootcert=clean_db.ca)
    cur = conn.cursor()
    cur.execute("INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, tags, payload)"
                " VALUES ('g1', now(), 'm', 'c', false, '', '[]', '{}') RETURNING id")
    rid = cur.fetchone()[0]
    cur.execute("INSERT INTO responses (request_id, created_at, status, prompt_tokens, completion_tokens,"
                " total_tokens, cost_usd, latency_ms, body) VALUES (%s, now(), 'success', 1, 1, 2, 0, 1, '{}')", (rid,))
    conn.commit()
    for stmt in ("DELETE FROM requests", "UPDATE requests SET model = 'x'", "TRUNCATE responses",
                 "CREATE TABLE evil (i int)", "DROP TABLE responses"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute(stmt)
        conn.rollback()
    conn.close()
    # cascade: deleting the request (as owner) removes its response
    with clean_db.admin(DB) as admin:
        admin.cursor().execute("DELETE FROM requests WHERE call_id = 'g1'")
    assert query(clean_db, "SELECT count(*) FROM responses") == [(0,)]


def test_call_id_unique(clean_db):
    with clean_db.admin(DB) as conn:
        cur = conn.cursor()
        ins = ("INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, tags, payload)"
               " VALUES ('dup', now(), 'm', 'c', false, '', '[]', '{}')")
        cur.execute(ins)
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute(ins)


def test_non_tls_connection_is_refused(cluster):
    with pytest.raises(psycopg2.OperationalError, match="no encryption|pg_hba"):
        psycopg2.connect(host="127.0.0.1", port=cluster.port, dbname=DB, user=WRITER, password=WRITER_PW,
                         sslmode="disable")


def test_wrong_ca_is_refused(cluster, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    from pgcluster import make_pki

    make_pki(str(other))
    with pytest.raises(psycopg2.OperationalError, match="certificate verify failed"):
        psycopg2.connect(host="localhost", port=cluster.port, dbname=DB, user=WRITER, password=WRITER_PW,
                         sslmode="verify-full", sslrootcert=str(other / "ca.crt"))


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_connect_line_and_pool_stats(cluster, migrated):
    handler = _Lines()
    lg = logging.getLogger("litellm_pglog")
    from litellm_pglog.events import _ensure_handler

    _ensure_handler()
    lg.addHandler(handler)
    try:
        stats = PoolStats()
        engine = make_engine(Settings.from_env(cluster.env()), stats)
        for _ in range(10):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        engine.dispose()
    finally:
        lg.removeHandler(handler)
    connects = [l for l in handler.lines if l.startswith("event=connect ")]
    assert len(connects) == 1
    info = json.loads(connects[0].split(" ", 1)[1])
    assert info["ssl"]["server_ssl"] is True and info["ssl"]["version"].startswith("TLSv1.")
    assert info["ssl"]["client_ssl_in_use"] is True and info["ssl"]["cipher"]
    assert info["auth"]["user"] == WRITER and info["auth"]["password_used"] is True
    assert info["auth"]["channel_binding"] == "require"
    assert info["auth"]["method"].startswith("scram-sha-256")
    assert WRITER_PW not in connects[0] and "***" in info["dsn"]
    assert info["pool"]["pool_size"] == 5
    snap = stats.snapshot()
    assert snap["checkouts"] == 10 and snap["connects"] == 1 and snap["reuse_rate"] == 0.9


def test_check_revision_refuses_mismatch(clean_db):
    engine = make_engine(Settings.from_env(clean_db.env()), log_connect=False)
    with engine.connect() as conn:
        assert check_revision(conn) == code_head()
    with clean_db.admin(DB) as admin:
        admin.cursor().execute("UPDATE alembic_version SET version_num = 'bogus'")
    try:
        with engine.connect() as conn:
            with pytest.raises(SchemaMismatch, match="bogus"):
                check_revision(conn)
    finally:
        with clean_db.admin(DB) as admin:
            admin.cursor().execute("UPDATE alembic_version SET version_num = %s", (code_head(),))
        engine.dispose()


def test_fresh_database_migrates_and_grants(cluster):
    cluster.create_db("mig_fresh")
    try:
        engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_fresh")), log_connect=False)
        first = migrate(engine, WRITER)
        second = migrate(engine, WRITER)
        engine.dispose()
        assert first["changed"] and first["previous_revision"] is None
        assert "INSERT ON requests" in first["granted"] and "SELECT ON alembic_version" in first["granted"]
        assert not second["changed"]
        with pytest.raises(ValueError, match="does not exist"):
            engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_fresh")), log_connect=False)
            migrate(engine, "no_such_role")
    finally:
        engine.dispose()
        cluster.drop_db("mig_fresh")


def test_check_revision_reports_a_dropped_connection_as_unreachable_not_mismatch(clean_db):
    """A connection that dies under the revision check is an outage (retry later), not a schema
    mismatch (which refuses to start and parks the spool): the two must not be confused."""
    from litellm_pglog import schema

    engine = make_engine(Settings.from_env(clean_db.env()), log_connect=False)
    try:
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with clean_db.admin(DB) as admin:
                admin.cursor().execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(Exception) as raised:
                check_revision(conn)
    finally:
        engine.dispose()
    assert not isinstance(raised.value, SchemaMismatch), raised.value
    assert isinstance(raised.value, schema.DatabaseUnreachable)
    assert "unreachable" in str(raised.value)


def test_check_revision_without_alembic_version_is_still_a_mismatch(cluster, migrated):
    """The other side of the same line: a reachable database without a readable alembic_version
    (here: a fresh, unmigrated one) stays a SchemaMismatch."""
    cluster.create_db("mig_none")
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_none")), log_connect=False)
    try:
        with engine.connect() as conn:
            with pytest.raises(SchemaMismatch, match="no readable alembic_version"):
                check_revision(conn)
    finally:
        engine.dispose()
        cluster.drop_db("mig_none")
