"""Settings from the environment (the gateway's env file). Nothing else configures the package."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from . import privacy


class ConfigError(ValueError):
    """A PGLOG_* variable is missing or malformed."""


def _number(env: Mapping[str, str], name: str, default, minimum, kind):
    """Parse one numeric variable; an empty value means the default."""
    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {what}") from exc
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum, int)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, default, minimum, float)


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq's target_session_attrs (PostgreSQL 14+ clients)
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")


def _hosts(env: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[int, ...], str | None]:
    """PGLOG_DB_HOST: one host or a comma list (the nodes of a Patroni cluster, tried in order);
    PGLOG_DB_PORT: one port for all of them or one per host; PGLOG_DB_TARGET_SESSION_ATTRS:
    which session libpq keeps -- default read-write with several hosts (the primary, wherever
    it is now), none with one (the DSN stays as it always was)."""
    raw = env["PGLOG_DB_HOST"]
    hosts = tuple(h.strip() for h in raw.split(","))
    if not all(hosts):
        raise ConfigError(f"PGLOG_DB_HOST={raw!r} has an empty host (comma list: host1,host2)")
    raw_port = env.get("PGLOG_DB_PORT", "").strip()
    if "," not in raw_port:
        ports = (_int(env, "PGLOG_DB_PORT", 5432, 1),) * len(hosts)
    else:
        items = [p.strip() for p in raw_port.split(",")]
        if len(items) != len(hosts):
            raise ConfigError(f"PGLOG_DB_PORT={raw_port!r}: {len(items)} ports for {len(hosts)} "
                              f"host{'s' if len(hosts) != 1 else ''} (give one port for all, or one per host)")
        if not all(items):
            raise ConfigError(f"PGLOG_DB_PORT={raw_port!r} has an empty port")
        ports = tuple(_int({"PGLOG_DB_PORT": p}, "PGLOG_DB_PORT", 5432, 1) for p in items)
    attrs = env.get("PGLOG_DB_TARGET_SESSION_ATTRS", "").strip() or ("read-write" if len(hosts) > 1 else None)
    if attrs is not None and attrs not in _SESSION_ATTRS:
        raise ConfigError(f"PGLOG_DB_TARGET_SESSION_ATTRS={attrs!r} is not one of {', '.join(_SESSION_ATTRS)}")
    return hosts, ports, attrs


@dataclass(frozen=True)
class Settings:
    db_hosts: tuple[str, ...]  # PGLOG_DB_HOST, one or more (comma list)
    db_ports: tuple[int, ...]  # one per host
    db_name: str
    db_user: str
    db_password: str
    sslmode: str
    sslrootcert: str | None
    channel_binding: str
    connect_timeout_s: int
    pool_size: int
    max_overflow: int
    pool_recycle_s: int
    batch_size: int
    flush_ms: int
    spool_dir: str
    spool_max_mb: int
    memory_max_records: int
    state_dir: str
    stats_interval_s: float
    drain_timeout_s: float
    max_payload_bytes: int
    # PGLOG_LOG_PAYLOADS full|redacted|metadata (+ PGLOG_REDACT_PATTERNS_FILE): privacy.py
    payload_policy: privacy.Policy = privacy.FULL
    # The metrics endpoint (metrics.py); port 0: none.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # libpq target_session_attrs; None: not set (one host, unless PGLOG_DB_TARGET_SESSION_ATTRS)
    target_session_attrs: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        missing = [n for n in ("PGLOG_DB_HOST", "PGLOG_DB_NAME", "PGLOG_DB_USER") if not env.get(n)]
        if missing:
            raise ConfigError("missing environment: " + ", ".join(missing))
        sslmode = env.get("PGLOG_DB_SSLMODE", "").strip() or "verify-full"
        if sslmode not in _SSLMODES:
            raise ConfigError(f"PGLOG_DB_SSLMODE={sslmode!r} is not one of {', '.join(_SSLMODES)}")
        # channel_binding=require makes libpq refuse any authentication but SCRAM-SHA-256-PLUS:
        # a connection that succeeds with it is client-side proof of SCRAM (see engine.py).
        # It needs TLS, so without TLS the libpq default 'prefer' applies.
        tls = sslmode in ("require", "verify-ca", "verify-full")
        channel_binding = env.get("PGLOG_DB_CHANNEL_BINDING", "").strip() or ("require" if tls else "prefer")
        if channel_binding not in ("disable", "prefer", "require"):
            raise ConfigError(f"PGLOG_DB_CHANNEL_BINDING={channel_binding!r} is not disable|prefer|require")
        hosts, ports, target_session_attrs = _hosts(env)
        return cls(
            db_hosts=hosts,
            db_ports=ports,
            target_session_attrs=target_session_attrs,
            db_name=env["PGLOG_DB_NAME"],
            db_user=env["PGLOG_DB_USER"],
            db_password=env.get("PGLOG_DB_PASSWORD", ""),
            sslmode=sslmode,
            sslrootcert=env.get("PGLOG_DB_SSLROOTCERT") or None,
            channel_binding=channel_binding,
            connect_timeout_s=_int(env, "PGLOG_DB_CONNECT_TIMEOUT_S", 5, 1),
            pool_size=_int(env, "PGLOG_POOL_SIZE", 5, 1),
            max_overflow=_int(env, "PGLOG_MAX_OVERFLOW", 2, 0),
            pool_recycle_s=_int(env, "PGLOG_POOL_RECYCLE_S", 1800, 1),
            batch_size=_int(env, "PGLOG_BATCH_SIZE", 500, 1),
            flush_ms=_int(env, "PGLOG_FLUSH_MS", 200, 1),
            spool_dir=env.get("PGLOG_SPOOL_DIR") or "/var/lib/litellm-gateway/spool",
            spool_max_mb=_int(env, "PGLOG_SPOOL_MAX_MB", 512, 1),
            memory_max_records=_int(env, "PGLOG_MEMORY_MAX_RECORDS", 100_000, 1),
            state_dir=env.get("PGLOG_STATE_DIR") or "/var/lib/litellm-gateway",
            stats_interval_s=_float(env, "PGLOG_STATS_INTERVAL_S", 60.0, 0.1),
            drain_timeout_s=_float(env, "PGLOG_DRAIN_TIMEOUT_S", 20.0, 0.0),
            max_payload_bytes=_int(env, "PGLOG_MAX_PAYLOAD_BYTES", 262_144, 1024),
            payload_policy=_policy(env),
            metrics_host=env.get("PGLOG_METRICS_HOST", "").strip() or "127.0.0.1",
            metrics_port=_int(env, "PGLOG_METRICS_PORT", 0, 0),
        )


def _policy(env: Mapping[str, str]) -> privacy.Policy:
    try:
        return privacy.Policy.from_env(env)
    except privacy.PolicyError as exc:
        raise ConfigError(f"PGLOG_LOG_PAYLOADS / PGLOG_REDACT_PATTERNS_FILE: {exc}") from None


@dataclass(frozen=True)
class GuardLimits:
    """Limits the request guard (guard.py) applies before LiteLLM reads a body.

    Read on their own (no database variables needed): the guard runs in every worker.
      PGLOG_MAX_BODY_BYTES   largest request body accepted, bytes (default 1 MiB) -> 413 above
      PGLOG_MAX_JSON_DEPTH   deepest nesting of arrays/objects in a JSON body (default 64) -> 400 above
      PGLOG_MAX_JSON_ITEMS   most values (array items, object members) in a JSON body (default
                             50000) -> 400 above: LiteLLM spends microseconds per value on its
                             event loop, so 300k tiny values in 1 MiB would hold up every caller
    """

    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 64
    max_json_items: int = 50_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "GuardLimits":
        env = os.environ if env is None else env
        return cls(
            max_body_bytes=_int(env, "PGLOG_MAX_BODY_BYTES", cls.max_body_bytes, 1024),
            max_json_depth=_int(env, "PGLOG_MAX_JSON_DEPTH", cls.max_json_depth, 8),
            max_json_items=_int(env, "PGLOG_MAX_JSON_ITEMS", cls.max_json_items, 100),
        )
