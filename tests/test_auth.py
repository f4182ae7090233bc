"""custom_auth unit tests (the 401s on the real proxy are in test_e2e_proxy.py)."""

import asyncio
import hashlib

import pytest
from fastapi import HTTPException

from litellm_pglog import records
from litellm_pglog import auth as auth_mod
from litellm_pglog.auth import user_api_key_auth


@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master-1")
    monkeypatch.setenv("PGLOG_API_KEYS", "alpha=sk-a1, beta=sk-b2,broken-entry,=nokey")


def auth(key, method=None, path=None):
    request = None if path is None else type("Req", (), {"scope": {"method": method, "path": path}})()
    return asyncio.run(user_api_key_auth(request, key))


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


@pytest.mark.parametrize("method,path", sorted(auth_mod.INFERENCE_ROUTES))
def test_internal_keys_may_call_the_inference_routes(method, path):
    assert auth("sk-a1", method, path).user_role.value == "internal_user"


@pytest.mark.parametrize("method,path", [("GET", "/model/info"), ("GET", "/get/config/callbacks"), ("GET", "/health"),
                                         ("GET", "/routes"), ("GET", "/settings"), ("GET", "/router/settings"),
                                         ("POST", "/key/generate"), ("GET", "/v1/chat/completions"),
                                         ("POST", "/v1/chat/completions/"), ("POST", "/openai/deployments/m/chat/completions")])
def test_internal_keys_get_403_elsewhere_and_the_master_key_does_not(method, path):
    with pytest.raises(HTTPException) as exc:
        auth("sk-a1", method, path)
    assert exc.value.status_code == 403
    assert auth("sk-master-1", method, path).user_role.value == "proxy_admin"


def test_allow_list_is_exactly_the_inference_api():
    assert auth_mod.INFERENCE_ROUTES == {(m, p + r) for p in ("/v1", "") for m, r in (
        ("POST", "/chat/completions"), ("POST", "/completions"), ("POST", "/embeddings"), ("GET", "/models"))}
