"""Models, migrations, grants, the connect evidence line, TLS/SCRAM enforcement."""

import hashlib
import json
import logging
import time

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
                                   "api_key_hash", "end_user", "tags", "payload", "event_id"]
    assert [c for c, _ in resp] == ["id", "request_id", "request_created_at", "created_at", "status",
                                    "prompt_tokens", "completion_tokens", "total_tokens", "cost_usd", "latency_ms",
                                    "ttft_ms", "body"]
    assert dict(req)["payload"] == "jsonb" and dict(req)["id"] == "bigint" and dict(req)["event_id"] == "uuid"
    parted = dict(query(cluster, "SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_partitioned_table p"
                                 " JOIN pg_class c ON c.oid = p.partrelid"))
    assert parted == {"requests": "RANGE (created_at)", "responses": "RANGE (request_created_at)"}
    # every responses partition has ON DELETE CASCADE to its twin requests partition, nothing else
    links = query(cluster, "SELECT c.relname, f.relname, k.confdeltype FROM pg_constraint k"
                           " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class f ON f.oid = k.confrelid"
                           " WHERE k.contype = 'f' AND k.conparentid = 0 ORDER BY 1")
    children = [r[0] for r in query(cluster, "SELECT inhrelid::regclass::text FROM pg_inherits"
                                             " WHERE inhparent = 'responses'::regclass ORDER BY 1")]
    assert children and [c for c, _, _ in links] == children
    assert all(f == "requests" + c[len("responses"):] and d == "c" for c, f, d in links)
    idx = {r[0] for r in query(cluster, "SELECT indexname FROM pg_indexes WHERE tablename IN ('requests','responses')")}
    assert {"ix_requests_model", "ix_responses_request_id", "ix_responses_created_at", "ix_requests_call_id",
            "uq_requests_created_at_event_id", "requests_pkey", "responses_pkey"} <= idx
    assert "uq_requests_call_id" not in idx


def test_models_match_migration(cluster, migrated):
    """Alembic autogenerate against the migrated DB finds no difference to the models."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from litellm_pglog.models import Base, is_partition

    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(
            conn, opts={"include_name": lambda name, type_, parents: not (type_ == "table" and is_partition(name))}),
            Base.metadata)
    engine.dispose()
    assert diff == []


def test_writer_role_is_least_privilege(clean_db):
    conn = psycopg2.connect(host="localhost", port=clean_db.port, dbname=DB, user=WRITER, password=WRITER_PW,
                            sslmode="verify-full", sslrootcert=clean_db.ca)
    cur = conn.cursor()
    cur.execute("INSERT INTO requests (event_id, call_id, created_at, model, call_type, stream, api_key_hash, tags,"
                " payload) VALUES (gen_random_uuid(), 'g1', now(), 'm', 'c', false, '', '[]', '{}') RETURNING id")
    rid = cur.fetchone()[0]
    cur.execute("INSERT INTO responses (request_id, request_created_at, created_at, status, prompt_tokens,"
                " completion_tokens, total_tokens, cost_usd, latency_ms, body)"
                " VALUES (%s, now(), now(), 'success', 1, 1, 2, 0, 1, '{}')", (rid,))
    conn.commit()
    # referential integrity survives the partitioning: no response without its request, whether the
    # id or the day is wrong (the day's twin foreign key checks both)
    for bad_id, bad_day in ((rid + 1000, "now()"), (rid, "now() - interval '1 day'"), (rid, "'1999-01-01'")):
        with pytest.raises(psycopg2.errors.ForeignKeyViolation):
            cur.execute("INSERT INTO responses (request_id, request_created_at, created_at, status, prompt_tokens,"
                        " completion_tokens, total_tokens, cost_usd, latency_ms, body)"
                        f" VALUES (%s, {bad_day}, now(), 'success', 1, 1, 2, 0, 1, '{{}}')", (bad_id,))
        conn.rollback()
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


def test_call_id_repeats_but_the_event_key_is_unique(clean_db):
    ins = ("INSERT INTO requests (event_id, call_id, created_at, model, call_type, stream, api_key_hash, tags, payload)"
           " VALUES (%s, 'dup', '2026-12-01T00:00:00Z', 'm', 'c', false, '', '[]', '{}')")
    with clean_db.admin(DB) as conn:
        cur = conn.cursor()
        cur.execute(ins, ("00000000-0000-0000-0000-000000000001",))
        cur.execute(ins, ("00000000-0000-0000-0000-000000000002",))  # same call id: a second call
        with pytest.raises(psycopg2.errors.UniqueViolation):
            cur.execute(ins, ("00000000-0000-0000-0000-000000000001",))  # same event: a duplicate


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


RAW_HEX_KEY = "5f" * 32  # what `openssl rand -hex 32` gives


def test_migration_0002_keeps_rows_and_replays_old_spool_lines_onto_them(cluster):
    """A database at 0001 with rows (as the previous release wrote them) goes to head: every row
    is kept and gets an event id; a spool line of the previous release replays onto its row."""
    from alembic import command

    from litellm_pglog import records
    from litellm_pglog.schema import alembic_config
    from litellm_pglog.insert import insert_batch

    cluster.create_db("mig_0001")
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_0001")), log_connect=False)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0001")
            # api_key_hash as the previous release stored it: sha256 of an accepted key, a raw 64-hex
            # key (the bug: a wrong key of that shape was stored as it was), none
            old_hashes = [hashlib.sha256(b"sk-team").hexdigest(), RAW_HEX_KEY, ""]
            for i, call_id in enumerate(["old-a", "old-b", "o" * 64]):
                rid = conn.execute(text(
                    "INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, tags, payload)"
                    " VALUES (:c, to_timestamp(:t), 'gpt-stub', 'acompletion', false, :k, '[\"run:old\"]', '{}')"
                    " RETURNING id"), {"c": call_id, "t": 1000.0 + i, "k": old_hashes[i]}).scalar()
                conn.execute(text("INSERT INTO responses (request_id, created_at, status, prompt_tokens,"
                                  " completion_tokens, total_tokens, cost_usd, latency_ms, body)"
                                  " VALUES (:r, to_timestamp(:t), 'success', 1, 2, 3, 0.5, 1, '{}')"),
                             {"r": rid, "t": 1000.5 + i})
        first = migrate(engine, WRITER)
        again = migrate(engine, WRITER)
        assert first["changed"] and first["previous_revision"] == "0001" and first["revision"] == code_head()
        assert not again["changed"]
        with engine.connect() as conn:
            got = conn.execute(text("SELECT q.call_id, q.event_id::text, r.total_tokens FROM requests q"
                                    " JOIN responses r ON r.request_id = q.id ORDER BY q.id")).all()
        assert [(c, t) for c, _, t in got] == [("old-a", 3), ("old-b", 3), ("o" * 64, 3)]
        with engine.connect() as conn:  # 0003: no first-token time was recorded for these
            assert conn.execute(text("SELECT count(*) FROM responses WHERE ttft_ms IS NOT NULL")).scalar() == 0
        assert [e for _, e, _ in got] == [records.legacy_event_id(c) for c, _, _ in got]
        with engine.connect() as conn:
            hashes = [h for (h,) in conn.execute(text("SELECT api_key_hash FROM requests ORDER BY id"))]
            raw_left = conn.execute(text("SELECT count(*) FROM requests WHERE api_key_hash = :k"),
                                    {"k": RAW_HEX_KEY}).scalar()
        # the accepted key's rows now hold exactly what the new code stores for that key
        assert hashes == [records.stored_key_hash("sk-team"), records.key_hash(RAW_HEX_KEY), ""]
        assert raw_left == 0
        # a spool line the previous release wrote for old-a (no "v", no event_id) is a duplicate now
        legacy_line = {"call_id": "old-a", "created_at": 1000.0, "model": "gpt-stub", "call_type": "acompletion",
                       "stream": False, "api_key_hash": RAW_HEX_KEY, "end_user": None, "tags": '["run:old"]',
                       "payload": "{}", "ended_at": 1000.5, "status": "success", "prompt_tokens": 1,
                       "completion_tokens": 2, "total_tokens": 3, "cost_usd": 0.5, "latency_ms": 1.0, "body": "{}"}
        written, dups = insert_batch(engine, [legacy_line, dict(legacy_line, call_id="old-c", created_at=1003.0)])
        assert (written, dups) == (1, [records.legacy_event_id("old-a")])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT api_key_hash FROM requests WHERE call_id = 'old-c'")).scalar() \
                == records.key_hash(RAW_HEX_KEY)  # a replayed old line is hashed the new way too
        # the caller's call id may now repeat
        written, _ = insert_batch(engine, [records.prepare(records.capture(
            {"id": "old-a", "startTime": 1000.0, "status": "success", "request_tags": ["run:old"]}), 4096)])
        assert written == 1
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM requests WHERE call_id = 'old-a'")).scalar() == 2
    finally:
        engine.dispose()
        cluster.drop_db("mig_0001")


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


def test_check_revision_on_a_read_only_node_is_not_a_mismatch(clean_db):
    """A demoted primary or a standby answers the revision check (a read) as the primary does:
    it must not refuse the start as a schema mismatch; its refusal to write is the delivery
    policy's business (spool and retry)."""
    from conftest import read_only_role

    engine = make_engine(Settings.from_env(clean_db.env()), log_connect=False)
    try:
        with read_only_role(clean_db):
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
                assert check_revision(conn) == code_head()
    finally:
        engine.dispose()


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


def test_migration_0005_partitions_keep_every_row_and_replays_stay_duplicates(cluster):
    """A database at 0004 with rows over several days (and one far in the past) goes to the
    partitioned schema: every row kept with its id and its response, one partition per day,
    each responses day tied to its requests day, the ids go on, and a spool replay of a stored
    record is still a duplicate across partitions."""
    import datetime as dt
    import uuid

    from alembic import command

    from litellm_pglog import records
    from litellm_pglog.insert import insert_batch
    from litellm_pglog.schema import alembic_config

    cluster.create_db("mig_0004")
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_0004")), log_connect=False)
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    times = [now - 86400 * d - i for d in (0, 1, 2, 5) for i in range(50)] + [now - 86400 * 400]
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
            for i, t in enumerate(times):
                rid = conn.execute(text(
                    "INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, tags, payload,"
                    " event_id) VALUES (:c, to_timestamp(:t), 'gpt-stub', 'acompletion', false, '', '[]', '{}', :e)"
                    " RETURNING id"), {"c": f"c{i}", "t": t, "e": str(uuid.UUID(int=i + 1))}).scalar()
                conn.execute(text("INSERT INTO responses (request_id, created_at, status, prompt_tokens,"
                                  " completion_tokens, total_tokens, cost_usd, latency_ms, body, ttft_ms)"
                                  " VALUES (:r, to_timestamp(:t), 'success', 1, 2, :n, 0.5, 1, '{}', 7)"),
                             {"r": rid, "t": t + 0.5, "n": i})
            before = conn.execute(text("SELECT q.id, q.call_id, q.created_at, r.id, r.total_tokens FROM requests q"
                                       " JOIN responses r ON r.request_id = q.id ORDER BY q.id")).all()
        first = migrate(engine, WRITER)
        assert first["changed"] and first["previous_revision"] == "0004" and first["revision"] == code_head()
        assert not migrate(engine, WRITER)["changed"]
        with engine.connect() as conn:
            after = conn.execute(text("SELECT q.id, q.call_id, q.created_at, r.id, r.total_tokens FROM requests q"
                                      " JOIN responses r ON r.request_id = q.id"
                                      " AND r.request_created_at = q.created_at ORDER BY q.id")).all()
            days = {d for (d,) in conn.execute(text(
                "SELECT DISTINCT to_char(created_at AT TIME ZONE 'UTC', 'YYYYMMDD') FROM requests"))}
            parts = {n for (n,) in conn.execute(text(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'requests'::regclass"))}
            in_default = conn.execute(text("SELECT count(*) FROM requests_default")).scalar()
            links = conn.execute(text("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")).scalar()
            resp_parts = conn.execute(text("SELECT count(*) FROM pg_inherits"
                                           " WHERE inhparent = 'responses'::regclass")).scalar()
        assert after == before and len(after) == len(times)
        assert {f"requests_p{d}" for d in days} <= parts and "requests_default" in parts
        assert len(parts) >= len(days) + 8  # the days with rows, yesterday to a week ahead, DEFAULT
        assert in_default == 0 and links == resp_parts
        # a replayed record of the old release's rows is a duplicate; a new one gets the next id
        old = records.prepare(records.capture({"id": "c0", "startTime": times[0], "status": "success"}), 4096)
        old["event_id"] = str(uuid.UUID(int=1))
        new = records.prepare(records.capture({"id": "fresh", "startTime": now, "status": "success"}), 4096)
        assert insert_batch(engine, [old, new]) == (1, [str(uuid.UUID(int=1))])
        with engine.connect() as conn:
            ids = conn.execute(text("SELECT q.id, r.id FROM requests q JOIN responses r ON r.request_id = q.id"
                                    " WHERE q.call_id = 'fresh'")).one()
        # the ids go on after the copied ones (a duplicate also draws a request id: ON CONFLICT does)
        assert ids[0] > len(times) and ids[1] == len(times) + 1
    finally:
        engine.dispose()
        cluster.drop_db("mig_0004")


def test_partitions_configure_needs_pg_partman(clean_db):
    """Without pg_partman the hand-over says so (the database host's role installs it)."""
    engine = make_engine(Settings.from_env(clean_db.env(OWNER, OWNER_PW)), log_connect=False)
    try:
        with engine.connect() as conn, pytest.raises(Exception, match="pg_partman is not installed"):
            conn.execute(text("SELECT pglog_partitions_configure('90 days', 4)"))
    finally:
        engine.dispose()


def test_migration_0005_downgrades_to_plain_tables_and_back_keeping_rows(cluster):
    from alembic import command

    from litellm_pglog import records
    from litellm_pglog.insert import insert_batch
    from litellm_pglog.schema import alembic_config

    cluster.create_db("mig_down")
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_down")), log_connect=False)
    try:
        migrate(engine, WRITER)
        rows = [records.prepare(records.capture({"id": f"d{i}", "startTime": 1.7e9 + 86400 * i, "status": "success"}),
                                4096) for i in range(3)]
        assert insert_batch(engine, rows) == (3, [])
        pairs = "SELECT q.id, q.call_id, r.id FROM requests q JOIN responses r ON r.request_id = q.id ORDER BY 1"
        with engine.connect() as conn:
            before = conn.execute(text(pairs)).all()
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0004")
        with engine.connect() as conn:
            assert conn.execute(text(pairs)).all() == before
            assert conn.execute(text("SELECT count(*) FROM pg_partitioned_table")).scalar() == 0
        assert migrate(engine, WRITER)["changed"]
        with engine.connect() as conn:
            assert conn.execute(text(pairs)).all() == before
    finally:
        engine.dispose()
        cluster.drop_db("mig_down")


def test_migration_0007_refresh_gives_the_same_rollup_as_0006_and_downgrades(cluster):
    """0007 rewrote the refresh (one hour, one day at a time; no joins between aggregates). The
    same rows give the same usage_hourly and usage_daily_rollup under 0006's functions and
    0007's, and the downgrade puts 0006's back."""
    from alembic import command

    from helpers import make_slo
    from litellm_pglog import records
    from litellm_pglog.insert import insert_batch
    from litellm_pglog.schema import alembic_config

    cluster.create_db("mig_0007")
    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig_0007")), log_connect=False)
    now = time.time()
    slos = []
    for i in range(120):  # 3 days, 4 models, 7 users, failures, streams with a first token
        at = now - 3 * 86400 + i * 2111.0
        slo = make_slo(i, model_group=f"m{i % 4}", status="failure" if i % 9 == 0 else "success", startTime=at,
                       endTime=at + 0.05 + (i * 37 % 900) / 1000.0, end_user=f"u{i % 7}" if i % 5 else None,
                       stream=i % 3 == 0, prompt_tokens=i, completion_tokens=2 * i, total_tokens=3 * i,
                       response_cost=0.001 * i)
        if i % 3 == 0:
            slo["completionStartTime"] = at + 0.02 + (i % 11) / 100.0
        slos.append(slo)
    rollup = ("SELECT * FROM usage_hourly ORDER BY hour, api_key_hash, end_user, model, status",
              "SELECT * FROM usage_daily_rollup ORDER BY day, api_key_hash, end_user, model, status")

    def rebuilt():
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE usage_hourly, usage_daily_rollup"))
            conn.execute(text("UPDATE usage_rollup_state SET logged_through = '-infinity'"))
            conn.execute(text("SELECT pglog_rollup_refresh('0 seconds')"))
        with engine.connect() as conn:
            return [conn.execute(text(sql)).all() for sql in rollup]

    try:
        migrate(engine, WRITER)
        assert insert_batch(engine, [records.prepare(records.capture(s), 4096) for s in slos]) == (len(slos), [])
        new = rebuilt()
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0006")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_proc WHERE proname = 'pglog_rollup_hour'")).scalar() == 0
        old = rebuilt()
        assert len(new[0]) > 50 and len(new[1]) > 20
        assert new == old
        assert migrate(engine, WRITER)["changed"]
        with engine.connect() as conn:
            jit = conn.execute(text("SELECT proconfig FROM pg_proc WHERE proname = 'pglog_rollup_refresh'")).scalar()
        assert "jit=off" in jit
    finally:
        engine.dispose()
        cluster.drop_db("mig_0007")
