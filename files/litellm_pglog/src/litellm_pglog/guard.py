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
  3. the body is read here first, bounded before anything parses it: larger than
     PGLOG_MAX_BODY_BYTES -> 413 (a Content-Length above it is refused unread); a JSON body
     nested deeper than PGLOG_MAX_JSON_DEPTH, with more than PGLOG_MAX_JSON_ITEMS values, or
     holding a non-finite number (NaN, Infinity, 1e400: not JSON, and jsonb refuses them)
     -> 400. The scan is linear, mostly in C
     (bytes.replace/split/translate, itertools.accumulate), never recursive, and yields to the
     event loop on large bodies; LiteLLM's parsers would recurse and stall or fail with a 500;
     on an inference route, a body that is not a JSON object in UTF-8, whose `model` is not
     printable text, whose `messages` are not the API's shape (messages_problem) or whose
     `response_format` is not one of the API's (inference_body_problem)
     -> 400: LiteLLM answers those without a row (its 400 for malformed JSON) or with a 500 (a
     model name it cannot echo in a header, a format the provider's SDK refuses);
     a JSON body LiteLLM itself would refuse (litellm_body_problem) -> 400 here, not the 500
     its error path gives without a database;
  4. response headers that reveal internals are dropped: every `llm_provider-*` header (the
     upstream's own headers, e.g. its server software) and every `x-litellm-*` header except
     KEPT_LITELLM_HEADERS (so x-litellm-model-api-base, -model-id, -model-name, -version, the
     cost breakdown with margins/discounts, key spend/limits go).
  5. delivery is watched: the guard keeps listening to the connection after the body, so it
     knows when a client hangs up before its answer is complete, even when LiteLLM does not
     (a non-streaming call: LiteLLM answers into the void and reports a success). The
     callback reads that note (DELIVERY, a context variable LiteLLM's logging tasks inherit)
     and the record becomes status client_disconnected.
A refused request to an inference route is still logged (a failure row with the HTTP status),
so every call answered on those routes has its rows; refusals elsewhere only count and appear
as rate-limited `event=request_refused` lines.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import json
import logging
import re
import sys
import time
from typing import Any, Awaitable, Callable

try:  # LiteLLM's own dependency, several times faster than json; same result for bounded JSON
    from orjson import loads as _loads
except ImportError:  # pragma: no cover
    from json import loads as _loads

from . import auth, records
from .config import GuardLimits
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

# Where LiteLLM looks for the key, in its order (user_api_key_auth.get_api_key, 1.108.7), after
# x-litellm-api-key and Authorization. Its `?key=` on Google generate-content routes is not taken.
_RAW_KEY_HEADERS = (b"api-key", b"x-api-key", b"x-goog-api-key", b"ocp-apim-subscription-key")
# Bodies LiteLLM does not parse as JSON (http_parsing_utils, 1.108.7): size-checked only.
_NOT_JSON = frozenset({"multipart/form-data", "application/x-www-form-urlencoded",
                       "application/x-protobuf", "application/protobuf"})
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1
_SLICE = 1 << 16  # brackets per step of the depth scan between yields to the event loop
_BODY_HEAD = 4096  # bytes of a refused body kept in its row
# Outside strings, Python's json (LiteLLM's fallback parser) turns NaN/Infinity and numbers that
# overflow into non-finite floats. A number token that may overflow a float: any with an exponent, or 309+ digits before the point
# (a JSON integer, however long, stays an int in Python: finite); float() decides. Tried only where
# a digit run starts, with possessive runs: a body of a million digits is scanned a few times.
_LARGE_NUMBER = re.compile(
    rb"(?<![0-9.eE+-])-?(?:[0-9]++(?:\.[0-9]++)?[eE][+-]?[0-9]++|[0-9]{309,}+\.[0-9]++)")
_INF = float("inf")
_CALL_TYPES = {"/chat/completions": "acompletion", "/completions": "atext_completion",
               "/embeddings": "aembedding", "/models": "amodels"}


class Delivery:
    """What the guard saw of one answer; read by the callback (records.prepare) as a snapshot."""

    __slots__ = ("t0", "status", "started", "complete", "body_bytes", "gone_after_ms")

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.status: int | None = None
        self.started = self.complete = False
        self.body_bytes = 0
        self.gone_after_ms: float | None = None

    def snapshot(self) -> dict[str, Any]:
        return {"client_disconnected": self.gone_after_ms is not None,
                "disconnected_after_ms": self.gone_after_ms,
                "response_started": self.started, "response_status": self.status,
                "response_complete": self.complete, "body_bytes_sent": self.body_bytes}


# The Delivery of the request being served; LiteLLM runs its logging callbacks in a copy of the
# request's context (its logging worker), so the callback finds the right one.
DELIVERY: contextvars.ContextVar[Delivery | None] = contextvars.ContextVar("litellm_pglog_delivery", default=None)


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


def _skeleton(body: bytes) -> bytes:
    """The body with the contents of every JSON string removed, in three C-speed passes:
    escaped backslashes and escaped quotes go first, then every remaining quote delimits a
    string, so the even pieces between quotes are what lies outside strings."""
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"".join(unescaped.split(b'"')[0::2])


async def json_problem(body: bytes, max_depth: int, max_items: int = GuardLimits.max_json_items) -> str | None:
    """Why a JSON body must be refused before anything parses it, or None.

    Brackets inside strings are text; outside them the nesting depth is the running sum of
    +1/-1 over the brackets, computed in slices with a yield to the event loop between them, so
    a hostile 1 MiB body of brackets does not hold up other requests. Non-finite numbers are
    found among the tokens outside strings; nothing here parses the body."""
    skeleton = _skeleton(body)
    brackets = skeleton.translate(None, _NOT_BRACKETS)
    opened = brackets.count(b"[") + brackets.count(b"{")
    if skeleton.count(b",") + opened > max_items:  # values ~ separators + containers
        return f"JSON body has more than {max_items} values"
    if opened > max_depth:
        depth = 0
        for start in range(0, len(brackets), _SLICE):
            part = brackets[start:start + _SLICE]
            if max(itertools.accumulate(map(_STEP.__getitem__, part), initial=depth)) > max_depth:
                return f"JSON body nested deeper than {max_depth} levels"
            depth += part.count(b"[") + part.count(b"{") - part.count(b"]") - part.count(b"}")
            if len(brackets) > _SLICE:
                await asyncio.sleep(0)
    for constant in (b"NaN", b"Infinity"):  # never JSON; Python's json (LiteLLM's fallback) takes them
        if constant in skeleton:
            return f"JSON body holds {constant.decode()}: JSON has no NaN or Infinity"
    for n, number in enumerate(_LARGE_NUMBER.finditer(skeleton)):
        if float(number.group()) in (_INF, -_INF):
            return f"JSON body holds a number too large for a float ({number.group()[:24].decode()}...)"
        if n % 1024 == 1023:
            await asyncio.sleep(0)
    return None


# the response_format types of the OpenAI chat API (what LiteLLM translates for other providers)
RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")


def _printable(text: str) -> bool:
    """Text a response header can carry (latin-1 without control characters)."""
    return all(" " <= c <= "~" or "\xa0" <= c <= "\xff" for c in text)


def inference_body_problem(body: bytes) -> str | None:
    """Why a body sent to an inference route cannot be served, or None. Called after
    json_problem has bounded the body (size, depth, values), so parsing it here is bounded too.

    Found by fuzzing (schemathesis, the bed's test_security): LiteLLM 1.108.7 answers a body
    that is not JSON (or not UTF-8) with its own 400 before any callback runs -- an answered
    call without rows; a model name with characters a header cannot carry (it echoes the name
    in a response header) makes its error handler fail, and the caller gets a plain 500, also
    without rows; the same for requested guardrails (echoed in a header too) and for a
    response_format that is not one of the API's (a 500 from the provider's SDK). Refused here,
    such a call gets a 400 and its failure row."""
    try:
        data = _loads(body)
    except (ValueError, RecursionError):  # orjson/json decode errors, invalid UTF-8
        return "request body is not valid JSON in UTF-8"
    if not isinstance(data, dict):
        return f"request body must be a JSON object, not {type(data).__name__}"
    model = data.get("model")
    if model is not None and not (isinstance(model, str) and _printable(model)):
        return "model must be a string of printable characters"
    metadata = data.get("metadata")
    for guardrails in (data.get("guardrails"), metadata.get("guardrails") if isinstance(metadata, dict) else None):
        # LiteLLM echoes the requested guardrails in a response header (same failure as model)
        if guardrails is not None and not all(_printable(t) for t in _strings(guardrails)):
            return "guardrails must name printable guardrails"
    if "messages" in data:
        problem = messages_problem(data["messages"])
        if problem:
            return problem
    fmt = data.get("response_format")
    # LiteLLM hands response_format to the provider's SDK, which fails on a malformed one before
    # sending (a string: 500; an unknown type: "Unsupported response_format type", 500, on the
    # bed): the OpenAI API's own answer to these is a 400
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") in RESPONSE_FORMAT_TYPES):
        return f"response_format must be an object whose type is one of {', '.join(RESPONSE_FORMAT_TYPES)}"
    return None


# Roles whose message may have no content (an assistant's tool calls; the legacy function role).
CONTENT_MAY_BE_NULL = frozenset({"assistant", "function"})


def messages_problem(messages: Any) -> str | None:
    """Why a chat body's `messages` is not the API's shape, or None: a list of objects, each
    with a string role and a content that is a string or a list of content parts (null only
    for CONTENT_MAY_BE_NULL). Found by fuzzing (2026-12-04): a developer or system message
    whose content is null, a number or a boolean makes LiteLLM 1.108.7's OpenAI path fail on
    the message (KeyError 'content'), and the caller gets a 500; the OpenAI API answers 400."""
    if not isinstance(messages, list):
        return "messages must be a list of message objects"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}] must be an object"
        role = message.get("role")
        if not isinstance(role, str):
            return f"messages[{i}].role must be a string"
        content = message.get("content")
        if content is None:
            if role in CONTENT_MAY_BE_NULL:
                continue
            return f"messages[{i}].content is required for this role"
        if not isinstance(content, (str, list)):
            return f"messages[{i}].content must be a string or a list of content parts"
    return litellm_messages_problem(messages)


def litellm_messages_problem(messages: list) -> str | None:
    """LiteLLM's own check of the user messages' content parts, asked first: a part whose type
    it does not know (none at all, or Anthropic's `tool_use`) fails its
    validate_chat_completion_user_messages with a bare Exception, which LiteLLM then maps to
    APIConnectionError, and the caller gets a 500 (found by fuzzing, 2026-12-04). Its own
    function, not a copy of its list of types, so the rule is the installed version's."""
    utils = sys.modules.get("litellm.utils")
    validate = getattr(utils, "validate_chat_completion_user_messages", None)
    if validate is None:
        return None  # LiteLLM not loaded (the package's own tests): the shape check above stands
    try:
        validate(messages=messages)
    except Exception as exc:  # LiteLLM raises a bare Exception for a bad part
        return str(exc)[:300]
    return None


def _strings(value: Any, depth: int = 0) -> list[str]:
    """Every string (object keys included) in a small JSON value, at most 4 levels down."""
    if isinstance(value, str):
        return [value]
    if depth > 4:
        return []
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k, depth + 1) + _strings(v, depth + 1)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, depth + 1)]
    return []


def litellm_body_problem(body: bytes, path: str) -> str | None:
    """LiteLLM's own verdict on a body it would refuse (client-side api_base/base_url/api keys,
    model_list, os.environ/ references, ...: auth_utils.is_request_body_safe, its list, not ours).
    LiteLLM means a 400, but it raises a ValueError whose handler needs its database client
    (prisma), absent here, so the caller would get a plain 500. Asked here first, after the
    body's shape is bounded, so such a request gets LiteLLM's 400 and its rows."""
    proxy = sys.modules.get("litellm.proxy.proxy_server")
    if proxy is None:
        return None
    try:
        data = _loads(body)
    except (ValueError, RecursionError):
        return None  # malformed: LiteLLM answers it
    if not isinstance(data, dict):
        return None
    try:
        from litellm.proxy.auth.auth_utils import is_request_body_safe

        is_request_body_safe(request_body=data, general_settings=getattr(proxy, "general_settings", {}) or {},
                             llm_router=getattr(proxy, "llm_router", None), model=data.get("model", ""), route=path)
    except ValueError as exc:
        return str(exc)[:500]
    except Exception:  # a LiteLLM internal we do not understand: leave the request to LiteLLM
        return None
    return None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


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
    def __init__(self, app: Any, limits: GuardLimits | None = None) -> None:
        self.app = app  # `.app`: FastAPI walks the stack through it (its OTel check)
        self.limits = limits or GuardLimits.from_env()
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
        if kind == "websocket":
            await self.app(scope, receive, filtered_send)
            return
        body, problem = await self._read_body(scope, receive)
        if body is None:  # the client left while sending its body: nobody to answer
            return
        if problem:
            status, reason, size = problem
            # what was refused, for the audit trail: the size, and the head of a body that was read
            extra: dict[str, Any] = {"body_bytes": size}
            if body:
                extra["body_head"] = body[:_BODY_HEAD].decode("utf-8", "replace")
            await self._refuse(scope, send, status, reason, key, **extra)
            return
        await self._serve(scope, body, receive, send)

    async def _serve(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        """Hand LiteLLM the body read above, and keep listening to the connection ourselves:
        the server's next message is http.disconnect, either because the answer is complete or
        because the client left first -- the latter is noted in the Delivery."""
        delivery = Delivery()
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                message = await receive()
                if message.get("type") == "http.disconnect":
                    if not delivery.complete:
                        delivery.gone_after_ms = round((time.monotonic() - delivery.t0) * 1000, 1)
                    gone.set()
                    return

        handed = False

        async def replay() -> Message:
            nonlocal handed
            if not handed:
                handed = True
                return {"type": "http.request", "body": body, "more_body": False}
            if not gone.is_set():  # no await when set: Starlette polls us inside a cancelled scope
                await gone.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            kind = message.get("type")
            if kind == "http.response.start":
                delivery.started, delivery.status = True, message.get("status")
                message = dict(message, headers=filter_headers(message.get("headers")))
            elif kind == "http.response.body":
                delivery.body_bytes += len(message.get("body") or b"")
                if not message.get("more_body"):
                    delivery.complete = True  # before the server sees it (and ends watch())
            await send(message)

        watcher = asyncio.ensure_future(watch())
        token = DELIVERY.set(delivery)
        try:
            await self.app(scope, replay, tracked_send)
        finally:
            DELIVERY.reset(token)
            watcher.cancel()

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes | None, tuple | None]:
        """The whole body, read before LiteLLM sees it, or why it is refused: (body, None) |
        (body, (status, reason, size)) | (None, None) when the client went away."""
        limit = self.limits.max_body_bytes
        headers = scope.get("headers") or []
        declared = _header(headers, b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                size = -1
            if size > limit:  # refused unread
                return b"", (413, f"request body of {size} bytes is larger than {limit} bytes", size)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                return None, None
            chunk = message.get("body") or b""
            size += len(chunk)
            if size > limit:
                return b"", (413, f"request body is larger than {limit} bytes", size)
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        content_type = (_header(headers, b"content-type") or "").split(";", 1)[0].strip().lower()
        if body and content_type not in _NOT_JSON:
            reason = await json_problem(body, self.limits.max_json_depth, self.limits.max_json_items)
            if reason is None and auth.is_inference(scope.get("method", "GET"), scope.get("path") or ""):
                reason = inference_body_problem(body)
            if reason is None:
                reason = litellm_body_problem(body, scope.get("path") or "")
            if reason:
                return body, (400, reason, size)
        return body, None

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str, key: str,
                      **request: Any) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1
        method, path = scope.get("method", "GET"), scope.get("path") or ""
        client = (scope.get("client") or ("", 0))[0]
        self._log("request_refused", status=status, reason=reason, method=method, path=path[:200], client=client)
        if scope.get("type") == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # before accept: the server answers 403
            return
        call_id = None
        if auth.is_inference(method, path):
            call_id = _log_refused_call(scope, status, reason, key, **request)
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
    limits = GuardLimits.from_env()  # a bad value raises ConfigError: the proxy must not start
    if getattr(app, "middleware_stack", None) is None:
        app.add_middleware(Guard, limits=limits)  # not started yet: the outermost user middleware
        guard = "pending"
    else:
        guard = Guard(app.middleware_stack, limits)
        app.middleware_stack = guard
    if state is not None:
        state.litellm_pglog_guard = guard
    emit("guard_installed", max_body_bytes=limits.max_body_bytes, max_json_depth=limits.max_json_depth,
         max_json_items=limits.max_json_items,
         kept_litellm_headers=sorted(h.decode() for h in KEPT_LITELLM_HEADERS), liveness=auth.LIVENESS_PATH)
    return True
