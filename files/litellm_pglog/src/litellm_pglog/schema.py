"""Schema management: Alembic upgrade as the owner, grants for the writer, revision check.

`migrate()` is idempotent: a second run changes nothing and says so (`changed: false`).
The writer role gets exactly SELECT, INSERT on requests and responses, USAGE on their identity
sequences, SELECT on alembic_version (so the logger can check the revision at start) and on
the usage rollup (usage_hourly, usage_daily_rollup, usage_rollup_state, usage_daily), and EXECUTE on
pglog_rollup_refresh(interval), the one way it can change the rollup.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from .dberrors import DatabaseUnreachable, is_connection_error, short

TABLES = ("requests", "responses")
# the writer reads these (the revision check; reports) and changes none of them
READ_ONLY = ("alembic_version", "usage_hourly", "usage_daily_rollup", "usage_rollup_state", "usage_daily")
# SECURITY DEFINER: the writer may bring the rollup up to date, never write it otherwise
EXECUTE = ("pglog_rollup_refresh(interval)",)


class SchemaMismatch(RuntimeError):
    """The database is not at the revision this code writes."""


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "litellm_pglog:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def code_head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def db_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _grants(conn: Connection, role: str) -> list[str]:
    exists = conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}).scalar()
    if not exists:
        raise ValueError(f"role {role!r} does not exist")
    q = conn.dialect.identifier_preparer.quote
    done: list[str] = []
    for table in TABLES:
        for priv in ("SELECT", "INSERT"):
            if not conn.execute(text("SELECT has_table_privilege(:r, :t, :p)"), {"r": role, "t": table, "p": priv}).scalar():
                conn.execute(text(f"GRANT {priv} ON TABLE {q(table)} TO {q(role)}"))
                done.append(f"{priv} ON {table}")
        seq = conn.execute(text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table}).scalar()
        if seq and not conn.execute(text("SELECT has_sequence_privilege(:r, :s, 'USAGE')"), {"r": role, "s": seq}).scalar():
            conn.execute(text(f"GRANT USAGE ON SEQUENCE {seq} TO {q(role)}"))  # seq comes quoted from PG
            done.append(f"USAGE ON {seq}")
    for relation in READ_ONLY:
        if not conn.execute(text("SELECT has_table_privilege(:r, :t, 'SELECT')"), {"r": role, "t": relation}).scalar():
            conn.execute(text(f"GRANT SELECT ON TABLE {q(relation)} TO {q(role)}"))
            done.append(f"SELECT ON {relation}")
    for function in EXECUTE:
        if not conn.execute(text("SELECT has_function_privilege(:r, :f, 'EXECUTE')"), {"r": role, "f": function}).scalar():
            conn.execute(text(f"GRANT EXECUTE ON FUNCTION {function} TO {q(role)}"))
            done.append(f"EXECUTE ON {function}")
    return done


def migrate(engine: Engine, grant_to: str | None = None) -> dict[str, Any]:
    with engine.begin() as conn:
        # Two gateways migrating at once: the second waits, then finds nothing to do.
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('litellm_pglog.migrate'))"))
        before = db_revision(conn)
        command.upgrade(alembic_config(conn), "head")
        after = db_revision(conn)
        granted = _grants(conn, grant_to) if grant_to else []
    return {
        "changed": before != after or bool(granted),
        "revision": after,
        "previous_revision": before,
        "granted": granted,
    }


def pending(engine: Engine) -> dict[str, Any]:
    """Whether `migrate` would change the schema: the deployment stops the running (older)
    gateway first, so no writer of the old schema writes into the new one."""
    with engine.connect() as conn:
        current = db_revision(conn)
    head = code_head()
    return {"pending": current != head, "revision": current, "head": head}


def check_revision(conn: Connection) -> str:
    """Return the head if the database is at this code's head. Raise SchemaMismatch if it is not
    (or has no readable alembic_version), DatabaseUnreachable if the question could not be asked:
    a connection lost here is an outage to wait out, not a reason to refuse to start."""
    head = code_head()
    try:
        current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except Exception as exc:
        if is_connection_error(exc):
            raise DatabaseUnreachable(f"database unreachable while checking the schema revision: {short(exc)}") from exc
        try:
            conn.rollback()
        except Exception as again:  # the connection broke on the way out: still an outage
            if is_connection_error(again):
                raise DatabaseUnreachable(f"database unreachable while checking the schema revision: "
                                          f"{short(again)}") from exc
            raise
        # missing table or no privilege: same answer, not migrated for us
        raise SchemaMismatch(f"database has no readable alembic_version ({exc.__class__.__name__}); "
                             f"run `litellm-pglog migrate` (code head {head})") from exc
    if current != head:
        raise SchemaMismatch(f"database revision {current!r} != code head {head!r}; run `litellm-pglog migrate`")
    return head
