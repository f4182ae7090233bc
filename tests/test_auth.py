"""custom_auth unit tests (the 401s on the real proxy are in test_e2e_proxy.py)."""

import asyncio
import hashlib

import pytest
from fastapi import HTTPException

from litellm_pglog import records
from litellm_pglog.auth import user_api_key_auth


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master-1")
    monkeypatch.setenv("PGLOG_API_KEYS", "alpha=sk-a1, beta=sk-b2,broken-entry,=nokey")


def auth(key):
    return asyncio.run(user_api_key_auth(None, key))


@pytest.mark.parametrize("key", ["", None, "   ", "Bearer "])
def test_missing_key_is_401(key):
    with pytest.raises(HTTPException) as exc:
        auth(key)
    assert exc.value.status_code == 401


@pytest.mark.parametrize("key", ["sk-wrong", "sk-a", "sk-a1x", "nokey", "broken-entry", "sk-master-"])
def test_wrong_key_is_401(key):
    with pytest.raises(HTTPException) as exc:
        auth(key)
    assert exc.value.status_code == 401


def test_master_key_is_admin_and_hashed():
    u = auth("sk-master-1")
    assert u.api_key == hashlib.sha256(b"sk-master-1").hexdigest() == records.key_digest("sk-master-1")
    assert u.key_alias == "master" and u.user_role.value == "proxy_admin"


def test_virtual_keys_with_alias_and_bearer_prefix():
    u = auth("Bearer sk-b2")
    assert u.key_alias == "beta" and u.api_key == hashlib.sha256(b"sk-b2").hexdigest()
    assert "sk-b2" not in u.model_dump_json()


def test_no_master_key_configured_rejects_everything(monkeypatch):
    monkeypatch.delenv("LITELLM_MASTER_KEY")
    monkeypatch.delenv("PGLOG_API_KEYS")
    with pytest.raises(HTTPException):
        auth("sk-master-1")
