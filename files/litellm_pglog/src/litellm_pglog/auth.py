"""custom_auth for the LiteLLM proxy: `general_settings: custom_auth: litellm_pglog.auth.user_api_key_auth`.

With custom_auth set, LiteLLM 1.108.7 calls only this function (its own master-key check is
skipped), so the master key (LITELLM_MASTER_KEY) is accepted here, as proxy admin, together
with PGLOG_API_KEYS (`alias=key,alias2=key2`, internal users). Missing or wrong key -> 401
(LiteLLM without a database would answer 500 / 400). The key LiteLLM keeps, and logs, is
records.key_digest(key) (sha256 hex), never the key; the logger stores records.key_hash() of
that (records.stored_key_hash(key)), so auth and records share one definition.
"""

from __future__ import annotations

import hmac
import os

from fastapi import HTTPException, Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from .records import key_digest


def _keys() -> list[tuple[str, bytes, LitellmUserRoles]]:
    # Read per call: cheap, and a changed env file takes effect at the next start anyway.
    keys: list[tuple[str, bytes, LitellmUserRoles]] = []
    master = os.environ.get("LITELLM_MASTER_KEY", "")
    if master:
        keys.append(("master", master.encode(), LitellmUserRoles.PROXY_ADMIN))
    for item in os.environ.get("PGLOG_API_KEYS", "").split(","):
        alias, sep, key = item.strip().partition("=")
        if sep and alias.strip() and key.strip():
            keys.append((alias.strip(), key.strip().encode(), LitellmUserRoles.INTERNAL_USER))
    return keys


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    presented = (api_key or "").strip()
    if presented.lower().startswith("bearer "):
        presented = presented[7:].strip()
    if not presented:
        raise _unauthorized("missing API key")
    candidate = presented.encode()
    match = None
    for alias, key, role in _keys():
        # compare with every key (no early exit) so timing does not tell which one matched
        if hmac.compare_digest(candidate, key) and match is None:
            match = (alias, role)
    if match is None:
        raise _unauthorized("invalid API key")
    alias, role = match
    return UserAPIKeyAuth(
        api_key=key_digest(presented),
        key_alias=alias,
        user_id=alias,
        user_role=role,
    )
