"""Engine and pool: psycopg2, TLS, SCRAM, and the evidence lines `event=connect` / pool stats.

What `event=connect` logs, once per new DBAPI connection, and why it is evidence:
  server_version       from the server (`SHOW server_version`)
  host, port           libpq's: the entry of PGLOG_DB_HOST/PGLOG_DB_PORT this connection went to
                       (several hosts: the first one that took a target_session_attrs session)
  client_addr, client_port, server_addr
                       the server's view of this connection's two ends (inet_client_addr(),
                       inet_client_port(), inet_server_addr()): the source address the pg_hba
                       rule in force was chosen by. NULL over a Unix socket.
  ssl                  the server's own view of this backend (pg_stat_ssl WHERE pid =
                       pg_backend_pid()): ssl true/false, TLS version, cipher, bits; plus
                       libpq's view (ssl_in_use, protocol) -- both sides agree or it shows
  auth.system_user     PostgreSQL >= 16: `SELECT system_user` is "<auth method>:<identity>" as
                       the server authenticated this connection (e.g. "scram-sha-256:writer");
                       NULL would mean trust. This is the server's own record, not a setting.
  auth.channel_binding libpq's channel_binding; with "require" libpq refuses every method but
                       SCRAM-SHA-256-PLUS, so a successful connection proves SCRAM was used.
  auth.method          system_user's method if the server has it, else "scram-sha-256-plus"
                       when channel_binding=require, else "unknown" (never guessed from
                       `SHOW password_encryption`, which only says how new passwords are hashed)
  auth.password_used   libpq's PQconnectionUsedPassword: the server asked for the password
  pool                 pool_size, max_overflow, recycle, pre_ping
  dsn                  the connection URL with the password masked
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2
import psycopg2.extensions
from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.pool import NullPool

from .config import Settings
from .events import emit


def url(settings: Settings) -> URL:
    query: dict[str, str] = {
        "sslmode": settings.sslmode,
        "channel_binding": settings.channel_binding,
        "connect_timeout": str(settings.connect_timeout_s),
        "application_name": "litellm-pglog",
        # a hung server must not hang the writer forever: the batch is then retried/spooled
        "options": "-c statement_timeout=30000",
        # A silent network drop (partition, dead host) sends no RST: without these the open
        # connection waits for the kernel's ~15 min retransmission limit while records pile up
        # in memory. With them an unanswered write fails after 10 s and an idle dead peer is
        # noticed in ~19 s, so the writer falls back to the spool.
        "keepalives": "1",
        "keepalives_idle": "10",
        "keepalives_interval": "3",
        "keepalives_count": "3",
        "tcp_user_timeout": "10000",
    }
    if settings.sslrootcert:
        query["sslrootcert"] = settings.sslrootcert
    if settings.target_session_attrs:
        query["target_session_attrs"] = settings.target_session_attrs
    host: str | None = settings.db_hosts[0]
    port: int | None = settings.db_ports[0]
    if len(settings.db_hosts) > 1:
        # Several hosts (a Patroni cluster): libpq takes them as comma lists, tries them in
        # order and keeps the first session that meets target_session_attrs; with verify-full
        # each host's certificate is checked against that host's own name. SQLAlchemy's
        # psycopg2 dialect passes `host=h1,h2&port=p1,p2` on as they are; its other spelling
        # (host=h1:p1&host=h2:p2) splits at ':' and would mangle an IPv6 address.
        query["host"] = ",".join(settings.db_hosts)
        query["port"] = ",".join(str(p) for p in settings.db_ports)
        host = port = None
    return URL.create(
        "postgresql+psycopg2",
        username=settings.db_user,
        password=settings.db_password or None,
        host=host,
        port=port,
        database=settings.db_name,
        query=query,
    )


def masked_dsn(settings: Settings) -> str:
    return url(settings).render_as_string(hide_password=True)


class PoolStats:
    """Counted from pool events; reuse_rate = 1 - connects / checkouts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.checkouts = 0
        self.connects = 0
        self.invalidated = 0

    def _inc(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self, engine: Engine | None = None) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = {
                "checkouts": self.checkouts,
                "connects": self.connects,
                "invalidated": self.invalidated,
                "reuse_rate": round(1.0 - self.connects / self.checkouts, 4) if self.checkouts else None,
            }
        if engine is not None:
            pool = engine.pool
            for attr in ("checkedout", "checkedin", "overflow", "size"):
                fn = getattr(pool, attr, None)
                if callable(fn):
                    snap["pool_" + attr] = fn()
        return snap


def _describe(dbapi_conn: Any, settings: Settings) -> dict[str, Any]:
    info = dbapi_conn.info
    cur = dbapi_conn.cursor()
    try:
        cur.execute(
            "SELECT current_setting('server_version'), current_user, s.ssl, s.version, s.cipher, s.bits,"
            " host(inet_client_addr()), inet_client_port(), host(inet_server_addr())"
            " FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
        )
        (server_version, user, ssl, ssl_version, cipher, bits,
         client_addr, client_port, server_addr) = cur.fetchone()
        system_user = None
        if info.server_version >= 160000:
            cur.execute("SELECT system_user")
            system_user = cur.fetchone()[0]
    finally:
        cur.close()
        dbapi_conn.rollback()  # leave no transaction open: now() of the first batch must be its own
    if system_user:
        method = system_user.split(":", 1)[0]
    elif settings.channel_binding == "require":
        method = "scram-sha-256-plus"
    else:
        method = "unknown"
    return {
        "server_version": server_version,
        "backend_pid": info.backend_pid,
        "host": info.host,
        "port": info.port,
        "client_addr": client_addr,
        "client_port": client_port,
        "server_addr": server_addr,
        "ssl": {
            "server_ssl": bool(ssl),
            "version": ssl_version,
            "cipher": cipher,
            "bits": bits,
            "client_ssl_in_use": bool(info.ssl_in_use),
            "client_protocol": info.ssl_attribute("protocol") if info.ssl_in_use else None,
            "sslmode": settings.sslmode,
        },
        "auth": {
            "user": user,
            "system_user": system_user,
            "method": method,
            "channel_binding": settings.channel_binding,
            "password_used": bool(info.used_password),
        },
        "libpq_version": psycopg2.extensions.libpq_version(),
    }


def describe_new_connection(settings: Settings) -> dict[str, Any]:
    """Opens one new connection (never a pooled one) and describes it as `event=connect` does:
    how the server authenticates these credentials from this host now (`connect-check`)."""
    engine = create_engine(url(settings), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return _describe(conn.connection.dbapi_connection, settings)
    finally:
        engine.dispose()


def make_engine(settings: Settings, stats: PoolStats | None = None, *, log_connect: bool = True,
                pre_ping: bool = True) -> Engine:
    """pre_ping=False for the writer: its delivery policy already retries a batch on a dead
    connection (the pool hands out a fresh one), and the ping is a TLS round trip per batch --
    CPU and a GIL switch in the proxy's process for nothing."""
    engine = create_engine(
        url(settings),
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=settings.pool_recycle_s,
        pool_timeout=10,
    )
    pool_info = {
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "pool_recycle_s": settings.pool_recycle_s,
        "pool_pre_ping": pre_ping,
    }
    dsn = masked_dsn(settings)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        if stats is not None:
            stats._inc("connects")
        if log_connect:
            emit("connect", dsn=dsn, pool=pool_info, **_describe(dbapi_conn, settings))

    if stats is not None:
        @event.listens_for(engine, "checkout")
        def _on_checkout(*_a: Any) -> None:
            stats._inc("checkouts")

        @event.listens_for(engine, "invalidate")
        def _on_invalidate(*_a: Any) -> None:
            stats._inc("invalidated")

    return engine
