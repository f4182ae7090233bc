"""From LiteLLM's standard_logging_object to plain rows that PostgreSQL accepts.

Two steps, so that the event loop does almost nothing:
  capture(slo)  -- in the callback: picks references into a small dict and gives the event its
                   identity (a random event id, the event time); a few microseconds;
  prepare(raw)  -- in the writer thread: serialises, escapes NUL, truncates; the result is
                   plain JSON-able data, which is also the spool's on-disk format.

Identity: the unique key of a row is (created_at, event_id), both chosen here at hand-off and
carried by the record, so a spool replay of the same record hits the same key (idempotent)
while no caller can make two calls collide: LiteLLM's call id (a caller may set it with the
`x-litellm-call-id` header) is stored and indexed, not unique.

Identity text (call_id, model, call_type, end_user) is stored verbatim when it fits the column
and is clean; otherwise (too long, NUL, lone surrogates, or already containing the marker) it is
stored as `<clean head>~sha256:<hex of the exact original>`, so two different values never end
up equal in the table (see ident()).

NUL in JSON: PostgreSQL text and jsonb cannot hold U+0000. In payload/body it is stored as the
six characters `\\u0000` (escaped, never dropped). Lone UTF-16 surrogates (possible from
`"\\ud800"` in a JSON body) cannot be encoded as UTF-8 and become U+FFFD. Non-finite numbers
(NaN, Infinity, which jsonb refuses) are stored as the strings "NaN", "Infinity", "-Infinity";
a non-finite time, token count or cost becomes the hand-off time / 0.

Keys: requests.api_key_hash = key_hash(what LiteLLM reports as the key), hashed unconditionally;
custom_auth hands LiteLLM key_digest(key), so a known key's stored value is stored_key_hash(key).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from typing import Any

from . import privacy

# LiteLLM fields copied by reference in capture(); everything is read from the
# standard_logging_object of LiteLLM 1.108.7 (45 keys).
_SLO_FIELDS = (
    "id", "startTime", "endTime", "model_group", "model", "call_type", "stream", "end_user",
    "request_tags", "messages", "model_parameters", "status", "prompt_tokens",
    "completion_tokens", "total_tokens", "response_cost", "response", "error_str",
    "error_information", "metadata", "completionStartTime",
)

# Format of prepared rows (the spool's lines). Rows without "v" come from a release before
# 0002 (no event id, api_key_hash unprefixed): upgrade() converts them on replay.
ROW_VERSION = 2

# A JSON escape \u0000 that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
TRUNCATION_MARKER = "_truncated"
IDENT_MARK = "~sha256:"

STATUS_SUCCESS = "success"
STATUS_FAILURE = "failure"
STATUS_CLIENT_DISCONNECTED = "client_disconnected"

# Column widths of models.py (kept here so prepare() needs no SQLAlchemy import).
CALL_ID_LEN = 256  # LiteLLM accepts a caller's x-litellm-call-id up to 256 characters
MODEL_LEN = 255
CALL_TYPE_LEN = 64
END_USER_LEN = 255


def new_event_id() -> str:
    """128 random bits as 32 hex digits (stored in a uuid column). ~1 us, no uuid object."""
    return os.urandom(16).hex()


def capture(slo: dict[str, Any]) -> dict[str, Any]:
    """Cheap: a dict of references plus the event's identity. No serialisation, no I/O
    (runs on the event loop). event_time is the request's start as LiteLLM saw it, or the
    hand-off time when LiteLLM gave none: fixed here, so every replay has the same key."""
    get = slo.get
    raw = {name: get(name) for name in _SLO_FIELDS}
    raw["event_id"] = os.urandom(16).hex()
    raw["event_time"] = raw["startTime"] or time.time()
    return raw


# ---- text --------------------------------------------------------------------------------------
def _utf8_safe(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        # lone surrogates -> invalid byte sequences -> U+FFFD
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _clean(s: str) -> str:
    if "\x00" in s:
        s = s.replace("\x00", "\\u0000")
    return _utf8_safe(s)


def ident(value: Any, limit: int) -> str:
    """A VARCHAR(limit) value that never makes two different inputs equal.

    Verbatim when it fits, has no NUL, encodes as UTF-8 and does not contain IDENT_MARK;
    otherwise `<clean head>~sha256:<sha256 hex of the exact original>` cut to `limit`
    (the digest is shortened only for columns narrower than the marker + 64). Verbatim values
    never contain the marker and marked values always do, so the mapping is injective."""
    s = "" if value is None else str(value)
    if len(s) <= limit and IDENT_MARK not in s and "\x00" not in s:
        try:
            s.encode("utf-8")
            return s
        except UnicodeEncodeError:
            pass
    digest = hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()
    room = limit - len(IDENT_MARK) - len(digest)
    if room < 0:
        return (IDENT_MARK + digest)[:limit]
    return _clean(s)[:room] + IDENT_MARK + digest


def text(value: Any, limit: int) -> str:
    """Kept for callers of the old API: the same as ident()."""
    return ident(value, limit)


# ---- JSON ----------------------------------------------------------------------------------------
def _finite(value: Any, depth: int = 0) -> Any:
    """A copy with non-finite floats replaced by their names (only called when json refused)."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return value
    if depth > 200:  # json.dumps would have raised RecursionError long before
        return str(value)[:1000]
    if isinstance(value, dict):
        return {k: _finite(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, depth + 1) for v in value]
    return value


# one encoder for every call: json.dumps() with options builds a new JSONEncoder each time,
# which cost a third of what the C encoder itself takes on these small documents
_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":"), allow_nan=False)


def _dumps(value: Any) -> str:
    try:
        return _ENCODER.encode(value)
    except ValueError:  # NaN / Infinity somewhere: jsonb would refuse the bare tokens
        return _ENCODER.encode(_finite(value))


def jsonb(value: Any, max_bytes: int) -> str:
    """JSON text that jsonb accepts: NUL escaped, non-finite numbers as strings, oversize
    replaced by a truncation marker."""
    doc = _dumps(value)
    if "\\u0000" in doc:
        doc = _JSON_NUL.sub(r"\1\\\\u0000", doc)
    try:
        raw = doc.encode("utf-8")
    except UnicodeEncodeError:
        doc = _utf8_safe(doc)
        raw = doc.encode("utf-8")
    if len(raw) <= max_bytes:
        return doc
    head = raw[: max(0, max_bytes - 1024)].decode("utf-8", "ignore")
    marker = {
        TRUNCATION_MARKER: True,
        "original_bytes": len(raw),
        "sha256": hashlib.sha256(raw).hexdigest(),
        "head": head,
    }
    return json.dumps(marker, ensure_ascii=False, separators=(",", ":"))


# ---- keys ----------------------------------------------------------------------------------------
KEY_HASH_PREFIX = "h1:"
# Domain separation: sha256 over this fixed label + the value. The stored value can never equal
# a raw key nor LiteLLM's own sha256(key) (its hash_token), whatever shape the value has.
KEY_HASH_LABEL = "litellm_pglog/api_key_hash/v1:"


def key_digest(secret: str) -> str:
    """What custom_auth hands LiteLLM as the key: sha256 hex (LiteLLM's own hash_token
    convention for sk- keys, so LiteLLM's logs never carry the key)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_hash(value: Any) -> str:
    """requests.api_key_hash: 'h1:' + sha256(KEY_HASH_LABEL + value), for ANY value LiteLLM
    reports as the key (our key_digest for accepted keys; for refused ones whatever LiteLLM
    holds, possibly the raw string). Never decided from the value's shape. '' when no key."""
    if value is None or value == "":
        return ""
    data = (KEY_HASH_LABEL + str(value)).encode("utf-8", "surrogatepass")
    return KEY_HASH_PREFIX + hashlib.sha256(data).hexdigest()


def stored_key_hash(secret: str) -> str:
    """The api_key_hash a call authenticated with `secret` gets (tests, operators, evidence)."""
    return key_hash(key_digest(secret))


# ---- rows ----------------------------------------------------------------------------------------
def _num(value: Any, cast: type) -> Any:
    try:
        out = cast(value) if value is not None else cast(0)
    except (TypeError, ValueError, OverflowError):
        return cast(0)
    if cast is float and not math.isfinite(out):
        return 0.0
    return out


def _uuid_text(hex32: str) -> str:
    h = hex32.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _litellm_disconnect(error: dict[str, Any], error_str: Any) -> bool:
    """LiteLLM's own 499 (the caller hung up), not a provider that answered 499."""
    if str(error.get("error_code") or "") != "499":
        return False
    if error.get("error_class") == "ClientDisconnected":
        return True
    message = f"{error.get('error_message') or ''} {error_str or ''}".lower()
    return error.get("error_class") == "HTTPException" and "client disconnected" in message


def _delivery(raw: dict[str, Any]) -> dict[str, Any] | None:
    d = raw.get("delivery")
    if d is None:
        return None
    try:
        return d.snapshot() if hasattr(d, "snapshot") else dict(d)
    except Exception:  # never let the delivery note cost the record
        return None


def _ttft_ms(raw: dict[str, Any], start: float, end: float, status: str) -> float | None:
    """Time to the first chunk of a stream. LiteLLM sets completionStartTime at the first chunk
    (or to endTime when none came, hence: failures have none); for a non-streaming call it is
    the end of the call, no first-token time, so None."""
    if not raw.get("stream") or status == STATUS_FAILURE:
        return None
    first = _num(raw.get("completionStartTime"), float)
    if not first or first < start or first > end:
        return None
    return (first - start) * 1000.0


def prepare(raw: dict[str, Any], max_payload_bytes: int, policy: privacy.Policy = privacy.FULL) -> dict[str, Any]:
    """One call -> the values of one requests row and one responses row (JSON-able).

    policy (privacy.py) decides how much of the call's text is kept; under "redacted" and
    "metadata" the caller-chosen strings (call id, end user, tags) are masked too."""
    now = time.time()
    start = _num(raw.get("event_time") or raw.get("startTime") or now, float) or now
    end = _num(raw.get("endTime") or start, float) or start
    metadata = raw.get("metadata") or {}
    error = raw.get("error_information")
    error = dict(error) if isinstance(error, dict) else {}
    delivery = _delivery(raw)
    gone = bool(delivery and delivery.get("client_disconnected"))
    if _litellm_disconnect(error, raw.get("error_str")) or gone:
        # the client did not get (all of) its answer: never a clean success. Tokens and cost stay
        # what LiteLLM reports: for a stream cut short, its estimate of what the provider billed
        # (prompt counted by LiteLLM + the chunks it received); for a non-streaming call the
        # provider's own usage (it finished the answer nobody received).
        status = STATUS_CLIENT_DISCONNECTED
        if not error.get("error_code"):
            # LiteLLM did not notice (non-streaming call, cancel_on_disconnect off): the guard did
            error = {"error_code": "499", "error_class": "ClientDisconnected",
                     "error_message": "client disconnected before the response was delivered"}
        error["message"] = raw.get("error_str") or error.get("error_message") or ""
        body: Any = {"error": error, "response": raw.get("response"), "delivery": delivery}
    elif raw.get("status") == "success":
        status = STATUS_SUCCESS
        body = raw.get("response")
        if body is None:
            body = {}
    else:
        status = STATUS_FAILURE
        error["message"] = raw.get("error_str") or error.get("error_message") or ""
        body = {"error": error}
    tags = raw.get("request_tags") or []
    if not isinstance(tags, list):
        tags = [tags]
    tags = [str(t) for t in tags]
    call_id, end_user = raw.get("id"), raw.get("end_user")
    if policy.patterns:
        tags = [policy.mask(t) for t in tags]
        call_id = policy.mask(str(call_id)) if call_id is not None else None
        end_user = policy.mask(str(end_user)) if end_user else end_user
    event_id = raw.get("event_id") or new_event_id()
    return {
        "v": ROW_VERSION,
        "event_id": _uuid_text(str(event_id)),
        "call_id": ident(call_id, CALL_ID_LEN),
        "created_at": start,
        "model": ident(raw.get("model_group") or "", MODEL_LEN),
        "call_type": ident(raw.get("call_type") or "", CALL_TYPE_LEN),
        "stream": bool(raw.get("stream")),
        "api_key_hash": key_hash(metadata.get("user_api_key_hash") if isinstance(metadata, dict) else None),
        "end_user": ident(end_user, END_USER_LEN) if end_user else None,
        "tags": jsonb(tags, max_payload_bytes),
        "payload": jsonb(
            policy.refused(raw["request_payload"]) if "request_payload" in raw  # a call the guard refused
            else policy.payload(raw.get("messages"), raw.get("model_parameters") or {}),
            max_payload_bytes,
        ),
        "ended_at": end,
        "status": status,
        "prompt_tokens": _num(raw.get("prompt_tokens"), int),
        "completion_tokens": _num(raw.get("completion_tokens"), int),
        "total_tokens": _num(raw.get("total_tokens"), int),
        "cost_usd": _num(raw.get("response_cost"), float),
        "latency_ms": max(0.0, (end - start) * 1000.0),
        "ttft_ms": _ttft_ms(raw, start, end, status),
        "body": jsonb(policy.body(body), max_payload_bytes),
    }


# ---- rows prepared by an older release (spool segments written before 0002) ----------------------
LEGACY_EVENT_ID_LABEL = "litellm_pglog/legacy_event_id/v1:"


def legacy_event_id(call_id: str) -> str:
    """The event id migration 0002 gave every existing row, derived from its (then unique)
    call_id: the same derivation for a pre-0002 spool row makes its replay hit that row."""
    return _uuid_text(hashlib.sha256((LEGACY_EVENT_ID_LABEL + call_id).encode("utf-8")).hexdigest()[:32])


def upgrade(row: dict[str, Any]) -> dict[str, Any]:
    """A prepared row in the current format (rows from before 0002 get what 0002 gave the
    table's rows: the derived event id, api_key_hash re-hashed the new way)."""
    if row.get("v") == ROW_VERSION:
        return row
    row = dict(row)
    row["v"] = ROW_VERSION
    row["event_id"] = legacy_event_id(str(row.get("call_id") or ""))
    row["api_key_hash"] = key_hash(row.get("api_key_hash") or None)
    return row
