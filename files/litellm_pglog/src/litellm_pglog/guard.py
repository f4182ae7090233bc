"""The request guard: a pure ASGI middleware in front of LiteLLM's whole app.

LiteLLM's config has no middleware hook, and several of its routes never call custom_auth
(/ui, /sso/*, /openapi.json, /health/readiness, ...). So when LiteLLM loads our callback (in
every uvicorn worker, during the app's startup) install() wraps the already built middleware
stack of `litellm.proxy.proxy_server.app`: every HTTP and WebSocket request passes here first.

For every request:
  1. the key (taken from the same headers, in the same order, as LiteLLM takes it) must belong
     to a caller (auth.identify), else 401; only LIVENESS_PATH answers without a key;
  2. a non-admin key may call only auth.INFERENCE_ROUTES, else 403 (the same allow-list
     custom_auth applies on LiteLLM's authenticated routes);
  3. response headers that reveal internals are dropped: every `llm_provider-*` header (the
     upstream's own headers, e.g. its server software) and every `x-litellm-*` header except
     KEPT_LITELLM_HEADERS (so x-litellm-model-api-base, -model-id, -model-name, -version, the
     cost breakdown with margins/discounts, key spend/limits go).
A refused request to an inference route is still logged (a failure row with the HTTP status),
so every call answered on those routes has its rows; refusals elsewhere only count and appear
as rate-limited `event=request_refused` lines.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Awaitable, Callable

from . import auth, records
from .events import emit

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# x-litellm-* headers a client may see: its call id (to find its rows), its cost, and which
# model group / how many retries answered. Everything else of that family is internal.
KEPT_LITELLM_HEADERS = frozenset({
    b"x-litellm-call-id",
    b"x-litellm-response-cost",
    b"x-litellm-model-group",
    b"x-litellm-attempted-retries",
    b"x-litellm-attempted-fallbacks",
    b"x-litellm-response-duration-ms",
})

# Where LiteLLM looks for the key, in its order (user_api_key_auth.get_api_key, 1.108.7).
_BEARER_HEADERS = (b"x-litellm-api-key", b"authorization")
_RAW_KEY_HEADERS = (b"api-key", b"x-api-key", b"x-goog-api-key", b"ocp-apim-subscription-key")
_CALL_TYPES = {"/chat/completions": "acompletion", "/completions": "atext_completion",
               "/embeddings": "aembedding", "/models": "amodels"}


def presented_key(headers: list[tuple[bytes, bytes]]) -> str:
    """The key as LiteLLM would read it: x-litellm-api-key (Bearer/Basic prefix optional), else
    Authorization (Bearer/Basic prefix required), else the provider-style key headers as sent."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        lname = name.lower()
        if lname not in found and value:
            found[lname] = value.decode("latin-1")
    value = found.get(b"x-litellm-api-key")
    if value is not None:
        for prefix in ("Bearer ", "Basic ", "bearer "):
            if value.startswith(prefix):
                return value[len(prefix):].strip()
        return value.strip()
    value = found.get(b"authorization")
    if value is not None:
        for prefix in ("Bearer ", "Basic ", "bearer "):
            if value.startswith(prefix):
                return value[len(prefix):].strip()
        return ""
    for name in _RAW_KEY_HEADERS:
        if name in found:
            return found[name].strip()
    return ""


def filter_headers(headers: Any) -> list[tuple[bytes, bytes]]:
    out = []
    for name, value in headers or ():
        lname = bytes(name).lower()
        if lname.startswith(b"llm_provider-"):
            continue
        if lname.startswith(b"x-litellm-") and lname not in KEPT_LITELLM_HEADERS:
            continue
        out.append((name, value))
    return out


class _RateLimitedLog:
    """At most `burst` lines per `window` seconds, then one line saying how many were skipped."""

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst, self.window = burst, window
        self.start, self.count, self.skipped = 0.0, 0, 0

    def __call__(self, name: str, **fields: Any) -> None:
        now = time.monotonic()
        if now - self.start >= self.window:
            if self.skipped:
                emit(name + "_suppressed", logging.WARNING, lines=self.skipped, window_s=self.window)
            self.start, self.count, self.skipped = now, 0, 0
        if self.count < self.burst:
            self.count += 1
            emit(name, logging.WARNING, **fields)
        else:
            self.skipped += 1


class Guard:
    def __init__(self, app: Any) -> None:
        self.app = app  # `.app`: FastAPI walks the stack through it (its OTel check)
        self.refused: dict[int, int] = {}
        self._log = _RateLimitedLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET") if kind == "http" else "GET"
        path = scope.get("path") or ""

        async def filtered_send(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message = dict(message, headers=filter_headers(message.get("headers")))
            await send(message)

        if kind == "http" and auth.is_liveness(method, path):
            await self.app(scope, receive, filtered_send)
            return
        key = presented_key(scope.get("headers") or [])
        caller = auth.identify(key) if key else None
        if caller is None:
            await self._refuse(scope, send, 401, "missing API key" if not key else "invalid API key", key)
            return
        if not auth.may_call(caller, method, path):
            await self._refuse(scope, send, 403, f"this key may not call {method} {path}"[:300], key)
            return
        await self.app(scope, receive, filtered_send)

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, key: str) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        method, path = scope.get("method", "GET"), scope.get("path") or ""
        client = (scope.get("client") or ("", 0))[0]
        self._log("request_refused", status=status, reason=reason, method=method, path=path[:200], client=client)
        if scope.get("type") == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        call_id = None
        if auth.is_inference(method, path):
            call_id = _log_refused_call(scope, status, reason, key)
        kind = {401: "auth_error", 403: "permission_error", 413: "invalid_request_error"}.get(
            status, "invalid_request_error")
        body = json.dumps({"error": {"message": reason, "type": kind, "param": None, "code": str(status)}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        if call_id:
            headers.append((b"x-litellm-call-id", call_id.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _log_refused_call(scope: Scope, status: int, reason: str, key: str, **request: Any) -> str | None:
    """Hand a refused call on an inference route to the writer (no I/O here), like a failure
    LiteLLM reports: the audit trail keeps who was refused, where, and why."""
    module = sys.modules.get(__package__ + ".callback")
    instance = getattr(module, "_instance", None) if module else None
    if instance is None:
        return None
    now = time.time()
    call_id = records.new_event_id()
    path = scope.get("path") or ""
    raw = {
        "id": call_id, "startTime": now, "endTime": now, "event_id": records.new_event_id(), "event_time": now,
        "model_group": "", "call_type": _CALL_TYPES.get(path.removeprefix("/v1"), ""), "stream": False,
        "end_user": None, "request_tags": [], "status": "failure",
        "request_payload": {"refused_request": {"method": scope.get("method"), "path": path[:300], **request}},
        "error_str": reason,
        "error_information": {"error_code": str(status), "error_class": "RefusedByGuard", "error_message": reason},
        "metadata": {"user_api_key_hash": records.key_digest(key) if key else None},
    }
    try:
        instance.writer.submit(raw)
    except Exception as exc:  # the refusal itself must still be answered
        emit("refused_call_not_logged", logging.ERROR, error=str(exc)[:200])
        return None
    return call_id


def install(app: Any = None) -> bool:
    """Put the guard in front of LiteLLM's app (idempotent). Called when LiteLLM loads our
    callback, in each worker during startup, when the app's middleware stack is already built;
    outside the proxy (tests, CLI) there is no app and nothing happens."""
    if app is None:
        module = sys.modules.get("litellm.proxy.proxy_server")
        app = getattr(module, "app", None) if module is not None else None
    if app is None:
        return False
    state = getattr(app, "state", None)
    if getattr(state, "litellm_pglog_guard", None) is not None:
        return True
    if getattr(app, "middleware_stack", None) is None:
        app.add_middleware(Guard)  # not started yet: becomes the outermost user middleware
        guard = "pending"
    else:
        guard = Guard(app.middleware_stack)
        app.middleware_stack = guard
    if state is not None:
        state.litellm_pglog_guard = guard
    emit("guard_installed", kept_litellm_headers=sorted(h.decode() for h in KEPT_LITELLM_HEADERS),
         liveness=auth.LIVENESS_PATH)
    return True
