"""Who may call what: the keys, and the allow-list of routes a non-admin key may use.

Used twice, with the same functions: by the request guard (guard.py, in front of every route,
including the ones LiteLLM serves without any auth) and by LiteLLM's custom_auth hook
(`general_settings: custom_auth: litellm_pglog.auth.user_api_key_auth`), which LiteLLM calls on
its authenticated routes. With custom_auth set, LiteLLM 1.108.7 runs neither its master-key
check nor its route checks (unless custom_auth_run_common_checks), so both are done here.

Keys: the master key (LITELLM_MASTER_KEY) is the proxy admin and may call every route;
PGLOG_API_KEYS (`alias=key,alias2=key2`) are internal users and may call only INFERENCE_ROUTES.
Missing or wrong key -> 401, a route outside the allow-list -> 403 (LiteLLM without a database
would answer 500 / 400). The key LiteLLM keeps, and logs, is records.key_digest(key) (sha256
hex), never the key; the logger stores records.key_hash() of that (records.stored_key_hash(key)),
so auth and records share one definition.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from .records import key_digest

# (method, path) a non-admin key may call: the OpenAI inference API and its unprefixed twins.
# An allow-list: any route LiteLLM adds in a later release is admin-only until listed here.
INFERENCE_ROUTES: frozenset[tuple[str, str]] = frozenset(
    [(m, prefix + path) for prefix in ("/v1", "") for m, path in (
        ("POST", "/chat/completions"),
        ("POST", "/completions"),
        ("POST", "/embeddings"),
        ("GET", "/models"),
    )]
)
# The one route answered without a key, for health checks (LiteLLM's own, answers "I'm alive!").
LIVENESS_PATH = "/health/liveliness"
LIVENESS_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Caller:
    alias: str
    admin: bool


def _keys() -> list[tuple[str, bytes, bool]]:
    # Read per call: cheap, and a changed env file takes effect at the next start anyway.
    keys: list[tuple[str, bytes, bool]] = []
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if master:
        keys.append(("master", master.encode(), True))
    for item in os.environ.get("PGLOG_API_KEYS", "").split(","):
        alias, sep, key = item.strip().partition("=")
        if sep and alias.strip() and key.strip():
            keys.append((alias.strip(), key.strip().encode(), False))
    return keys


def identify(presented: str | None) -> Caller | None:
    """The caller a key belongs to, or None. Compares with every key (no early exit), so the
    time taken does not tell which key matched or how much of it."""
    candidate = (presented or "").encode("utf-8", "surrogatepass")
    if not candidate:
        return None
    match = None
    for alias, key, admin in _keys():
        if hmac.compare_digest(candidate, key) and match is None:
            match = Caller(alias, admin)
    return match


def is_inference(method: str, path: str) -> bool:
    return (method.upper(), path) in INFERENCE_ROUTES


def is_liveness(method: str, path: str) -> bool:
    return path == LIVENESS_PATH and method.upper() in LIVENESS_METHODS


def may_call(caller: Caller, method: str, path: str) -> bool:
    """Admins everything; other keys exactly INFERENCE_ROUTES (exact path, exact method)."""
    return caller.admin or is_inference(method, path)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    presented = (api_key or "").strip()
    if presented.lower().startswith("bearer "):
        presented = presented[7:].strip()
    if not presented:
        raise _unauthorized("missing API key")
    caller = identify(presented)
    if caller is None:
        raise _unauthorized("invalid API key")
    if request is not None:
        scope = request.scope
        method, path = scope.get("method") or "GET", scope.get("path") or ""
        if not may_call(caller, method, path):
            raise HTTPException(status_code=403, detail=f"this key may not call {method} {path}"[:300])
    return UserAPIKeyAuth(
        api_key=key_digest(presented),
        key_alias=caller.alias,
        user_id=caller.alias,
        user_role=LitellmUserRoles.PROXY_ADMIN if caller.admin else LitellmUserRoles.INTERNAL_USER,
    )
