"""Several database hosts (Patroni: one primary, the others standbys): PGLOG_DB_HOST lists them
all, libpq tries them in order and keeps the first read-write session
(target_session_attrs=read-write), so a gateway follows a failover without a redeploy."""

import socket

import psycopg2
import pytest
from sqlalchemy import create_engine, exc

from conftest import read_only_role
from helpers import make_slo
from litellm_pglog import copyload, records
from litellm_pglog.config import ConfigError, Settings
from litellm_pglog.dberrors import is_connection_error
from litellm_pglog.engine import PoolStats, describe_new_connection, make_engine, masked_dsn, url
from litellm_pglog.insert import insert_batch
from litellm_pglog.writer import Writer
from pgcluster import WRITER_PW, free_port, wait_until

BASE = {"PGLOG_DB_NAME": "litellm_db", "PGLOG_DB_USER": "w", "PGLOG_DB_PASSWORD": "s3cret",
        "PGLOG_DB_SSLROOTCERT": "/etc/ca.crt"}


def settings(**env):
    return Settings.from_env({**BASE, **{f"PGLOG_DB_{k.upper()}": v for k, v in env.items()}})


def connect_args(s):
    engine = create_engine(url(s))
    try:
        return engine.dialect.create_connect_args(engine.url)[1]
    finally:
        engine.dispose()


def test_single_host_dsn_is_byte_identical_to_before():
    """One host: the URL is exactly what it was before several hosts were possible (no
    target_session_attrs), so nothing changes for a one-node database."""
    s = settings(host="db1.example", port="5433")
    assert masked_dsn(s) == (
        "postgresql+psycopg2://w:***@db1.example:5433/litellm_db?application_name=litellm-pglog"
        "&channel_binding=require&connect_timeout=5&keepalives=1&keepalives_count=3&keepalives_idle=10"
        "&keepalives_interval=3&options=-c+statement_timeout%3D30000&sslmode=verify-full"
        "&sslrootcert=%2Fetc%2Fca.crt&tcp_user_timeout=10000")
    assert (s.db_hosts, s.db_ports, s.target_session_attrs) == (("db1.example",), (5433,), None)
    args = connect_args(s)
    assert (args["host"], args["port"]) == ("db1.example", 5433) and "target_session_attrs" not in args


@pytest.mark.parametrize("host, port, hosts, ports", [
    ("db1,db2", "", ("db1", "db2"), (5432, 5432)),
    ("db1, db2 ,db3", "6432", ("db1", "db2", "db3"), (6432, 6432, 6432)),
    ("10.0.0.1,10.0.0.2", "5432,5433", ("10.0.0.1", "10.0.0.2"), (5432, 5433)),
    ("fd00::1,fd00::2", " 5432 , 5433 ", ("fd00::1", "fd00::2"), (5432, 5433)),
])
def test_a_host_list_reaches_libpq_with_every_host_and_read_write(host, port, hosts, ports):
    s = settings(host=host, port=port)
    assert (s.db_hosts, s.db_ports, s.target_session_attrs) == (hosts, ports, "read-write")
    args = connect_args(s)
    assert args["host"] == ",".join(hosts) and args["port"] == ",".join(map(str, ports))
    assert args["target_session_attrs"] == "read-write" and args["sslmode"] == "verify-full"
    dsn = masked_dsn(s)
    assert "s3cret" not in dsn and "w:***@" in dsn and "target_session_attrs=read-write" in dsn


def test_target_session_attrs_can_be_set_or_relaxed():
    assert settings(host="db1,db2", target_session_attrs="any").target_session_attrs == "any"
    assert settings(host="db1,db2", target_session_attrs="primary").target_session_attrs == "primary"
    one = settings(host="db1", target_session_attrs="read-write")
    assert one.target_session_attrs == "read-write"
    assert connect_args(one)["target_session_attrs"] == "read-write"


@pytest.mark.parametrize("env, message", [
    ({"host": "db1,db2", "port": "5432,5433,5434"}, "PGLOG_DB_PORT.*3 ports for 2 hosts"),
    ({"host": "db1", "port": "5432,5433"}, "PGLOG_DB_PORT.*2 ports for 1 host"),
    ({"host": "db1,,db2"}, "PGLOG_DB_HOST.*empty"),
    ({"host": "db1,db2,"}, "PGLOG_DB_HOST.*empty"),
    ({"host": "db1,db2", "port": "5432,x"}, "PGLOG_DB_PORT.*'x'"),
    ({"host": "db1,db2", "port": "5432,0"}, "PGLOG_DB_PORT"),
    ({"host": "db1,db2", "port": "5432,"}, "PGLOG_DB_PORT"),
    ({"host": "db1,db2", "target_session_attrs": "master"}, "PGLOG_DB_TARGET_SESSION_ATTRS='master'"),
])
def test_malformed_host_and_port_lists_fail_at_load(env, message):
    with pytest.raises(ConfigError, match=message):
        settings(**env)
    assert issubclass(ConfigError, ValueError)


# ---- against the real cluster ----------------------------------------------------------------

def two_hosts(cluster, first_port=None, second_host="localhost"):
    """The test cluster as the second of two hosts; the first a closed port (a node down)."""
    env = cluster.env()
    env["PGLOG_DB_HOST"] = f"localhost,{second_host}"
    env["PGLOG_DB_PORT"] = f"{first_port or free_port()},{cluster.port}"
    return env


def test_two_host_dsn_skips_a_dead_first_host(clean_db):
    """The DSN libpq gets holds both hosts and target_session_attrs; the first (closed port) is
    skipped, the connection is the second one's, verified (verify-full) and SCRAM as before."""
    closed = free_port()
    s = Settings.from_env(two_hosts(clean_db, closed))
    engine = make_engine(s, log_connect=False)
    try:
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            dsn = dbapi.dsn
            used = (dbapi.info.host, dbapi.info.port)
    finally:
        engine.dispose()
    assert f"host=localhost,localhost port={closed},{clean_db.port}" in dsn
    assert "target_session_attrs=read-write" in dsn and "sslmode=verify-full" in dsn
    assert "password=xxx" in dsn and WRITER_PW not in dsn
    assert used == ("localhost", clean_db.port)
    info = describe_new_connection(s)  # what `event=connect` and `connect-check` say
    assert (info["host"], info["port"]) == ("localhost", clean_db.port)
    assert info["ssl"]["server_ssl"] is True and info["auth"]["method"].startswith("scram-sha-256")


def _other_name_of_this_host():
    name = socket.gethostname()
    try:
        addr = socket.gethostbyname(name)
    except OSError:
        addr = None
    return name if addr == "127.0.0.1" and name != "localhost" else None


@pytest.mark.skipif(_other_name_of_this_host() is None, reason="the host name does not resolve to 127.0.0.1")
def test_verify_full_checks_the_name_of_the_host_it_reached(clean_db):
    """libpq checks the certificate against the name of the host of the list it reached: the
    cluster reached as `localhost` (in its certificate) is accepted, reached by another name of
    the same address (not in it) refused -- each node's certificate must name its own address."""
    other = _other_name_of_this_host()
    with pytest.raises(exc.OperationalError, match=f'does not match host name "{other}"'):
        describe_new_connection(Settings.from_env(two_hosts(clean_db, second_host=other)))
    assert describe_new_connection(Settings.from_env(two_hosts(clean_db)))["host"] == "localhost"


def test_read_write_target_refuses_a_read_only_session(clean_db):
    """target_session_attrs=read-write: a node whose sessions are read-only (a standby, a
    demoted primary) is not connected to; the error is a connection error, so the writer
    spools and tries again (the records are fine)."""
    with read_only_role(clean_db):
        with pytest.raises(exc.OperationalError, match="session is read-only") as raised:
            describe_new_connection(Settings.from_env(two_hosts(clean_db)))
        assert is_connection_error(raised.value)
        # one host without target_session_attrs connects: its inserts are refused instead (below)
        assert describe_new_connection(Settings.from_env(clean_db.env()))["host"] == "localhost"


@pytest.mark.parametrize("path", ["statement", "copy"])
def test_read_only_refusal_is_a_connection_error_and_the_connection_is_dropped(clean_db, monkeypatch, path):
    """25006 read_only_sql_transaction (a session on a demoted primary or a standby) says where
    the connection went, not what is wrong with the rows: the delivery policy must retry and
    spool, never bisect into the rejected file; the pooled connection is thrown away so the
    next checkout reconnects through the host list."""
    monkeypatch.setattr(copyload, "MIN_ROWS", 1 if path == "copy" else 10 ** 9)
    stats = PoolStats()
    engine = make_engine(Settings.from_env(clean_db.env()), stats, log_connect=False, pre_ping=False)
    rows = [records.prepare(records.capture(make_slo(i)), 262144) for i in range(3)]
    try:
        with read_only_role(clean_db):
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction) as raised:
                insert_batch(engine, rows)
            assert raised.value.pgcode == "25006"
            assert is_connection_error(raised.value)
            assert stats.invalidated == 1 and stats.connects == 1
        assert insert_batch(engine, rows) == (3, [])
        assert stats.connects == 2  # a new session, not the read-only one again
    finally:
        engine.dispose()


def test_writer_with_the_first_host_down_writes_to_the_second(clean_db, writer_env, monkeypatch):
    for k, v in two_hosts(clean_db).items():
        monkeypatch.setenv(k, v)
    w = Writer(Settings.from_env())
    w.start()
    try:
        assert w._online is True
        for i in range(20):
            w.submit(records.capture(make_slo(i, tag="run:multihost")))
        assert wait_until(lambda: w.counters["written"] == 20, 15)
    finally:
        w.stop(timeout=5)
    assert w.counters["spooled"] == 0 and w.counters["failed"] == 0 and w.counters["dropped"] == 0
