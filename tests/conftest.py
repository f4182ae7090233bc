"""Shared fixtures: one real PostgreSQL cluster per session (SCRAM + TLS verify-full), a
migrated database, writer settings with a private spool/state dir per test."""

from __future__ import annotations

import contextlib

import pytest

# The package comes from the dev venv, where `make venvs` installs it editable
# (files/litellm_pglog): here and in the subprocesses (proxy, CLI) alike.
from pgcluster import DB, OWNER, OWNER_PW, WRITER, new_cluster, wait_until


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests with the real LiteLLM proxy (run by default)")


@pytest.fixture(scope="session")
def cluster():
    c = new_cluster()
    yield c
    c.destroy()


@pytest.fixture(scope="session")
def migrated(cluster):
    from litellm_pglog.config import Settings
    from litellm_pglog.engine import make_engine
    from litellm_pglog.schema import migrate

    engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
    result = migrate(engine, WRITER)
    engine.dispose()
    return result


@pytest.fixture
def clean_db(cluster, migrated):
    with cluster.admin(DB) as conn:
        conn.cursor().execute("TRUNCATE requests, responses RESTART IDENTITY")
    return cluster


@pytest.fixture
def writer_env(clean_db, tmp_path, monkeypatch):
    env = clean_db.env()
    env.update({
        "PGLOG_SPOOL_DIR": str(tmp_path / "spool"),
        "PGLOG_STATE_DIR": str(tmp_path / "state"),
        "PGLOG_FLUSH_MS": "50",
        "PGLOG_DRAIN_TIMEOUT_S": "10",
    })
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


def query(cluster, sql: str, params=()):  # noqa: ANN001, ANN201
    with cluster.admin(DB) as conn:
        cur = conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


@contextlib.contextmanager
def read_only_role(cluster, role: str = WRITER):  # noqa: ANN001, ANN201
    """The database turns read-only for `role`, as a primary demoted in a switchover does for
    the gateway: every new session of the role is read-only (default_transaction_read_only)
    and its open sessions are cut (Patroni restarts the old primary as a standby). Reset on
    the way out, whatever happened."""
    with cluster.admin() as conn:
        cur = conn.cursor()
        cur.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        try:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            assert wait_until(lambda: not query(cluster, "SELECT 1 FROM pg_stat_activity WHERE usename = %s",
                                                (role,)), 10)
            yield
        finally:
            cur.execute(f"ALTER ROLE {role} RESET default_transaction_read_only")
