"""From LiteLLM's standard_logging_object to plain rows that PostgreSQL accepts.

Two steps, so that the event loop does almost nothing:
  capture(slo)  -- in the callback: picks references into a small dict (a few microseconds);
  prepare(raw)  -- in the writer thread: serialises, escapes NUL, truncates; the result is
                   plain JSON-able data, which is also the spool's on-disk format.

NUL: PostgreSQL text and jsonb cannot hold U+0000. It is stored as the six characters
`\\u0000` (escaped, never dropped). Lone UTF-16 surrogates (possible from `"\\ud800"` in a JSON
body) cannot be encoded as UTF-8 and become U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

# LiteLLM fields copied by reference in capture(); everything is read from the
# standard_logging_object of LiteLLM 1.108.7 (45 keys).
_SLO_FIELDS = (
    "id", "startTime", "endTime", "model_group", "model", "call_type", "stream", "end_user",
    "request_tags", "messages", "model_parameters", "status", "prompt_tokens",
    "completion_tokens", "total_tokens", "response_cost", "response", "error_str",
    "error_information", "metadata",
)

_HEX64 = re.compile(r"[0-9a-f]{64}")
# A JSON escape \u0000 that is not itself an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")
TRUNCATION_MARKER = "_truncated"


def capture(slo: dict[str, Any]) -> dict[str, Any]:
    """Cheap: a dict of references. No serialisation, no I/O (runs on the event loop)."""
    get = slo.get
    return {name: get(name) for name in _SLO_FIELDS}


def text(value: Any, limit: int) -> str:
    """A VARCHAR value: str, NUL escaped, cut to the column length."""
    s = "" if value is None else str(value)
    if "\x00" in s:
        s = s.replace("\x00", "\\u0000")
    return _utf8_safe(s)[:limit]


def _utf8_safe(s: str) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        # lone surrogates -> invalid byte sequences -> U+FFFD
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def jsonb(value: Any, max_bytes: int) -> str:
    """JSON text that jsonb accepts: NUL escaped, oversize replaced by a truncation marker."""
    doc = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
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


def key_hash(value: Any) -> str:
    """sha256 hex of the caller's key. custom_auth already hands LiteLLM a hash; anything else
    (e.g. a raw key from another auth path) is hashed here so that no raw key is ever stored."""
    if not value:
        return ""
    s = str(value)
    if _HEX64.fullmatch(s):
        return s
    return hashlib.sha256(s.encode("utf-8", "replace")).hexdigest()


def _num(value: Any, cast: type) -> Any:
    try:
        return cast(value) if value is not None else cast(0)
    except (TypeError, ValueError):
        return cast(0)


def prepare(raw: dict[str, Any], max_payload_bytes: int) -> dict[str, Any]:
    """One call -> the values of one requests row and one responses row (JSON-able)."""
    now = time.time()
    start = _num(raw.get("startTime") or now, float)
    end = _num(raw.get("endTime") or start, float)
    metadata = raw.get("metadata") or {}
    status = "success" if raw.get("status") == "success" else "failure"
    if status == "success":
        body: Any = raw.get("response")
        if body is None:
            body = {}
    else:
        error = dict(raw.get("error_information") or {})
        error["message"] = raw.get("error_str") or error.get("error_message") or ""
        body = {"error": error}
    tags = raw.get("request_tags") or []
    if not isinstance(tags, list):
        tags = [tags]
    return {
        "call_id": text(raw.get("id"), 64),
        "created_at": start,
        "model": text(raw.get("model_group") or "", 255),
        "call_type": text(raw.get("call_type") or "", 64),
        "stream": bool(raw.get("stream")),
        "api_key_hash": key_hash(metadata.get("user_api_key_hash") if isinstance(metadata, dict) else None),
        "end_user": text(raw["end_user"], 255) if raw.get("end_user") else None,
        "tags": jsonb([str(t) for t in tags], max_payload_bytes),
        "payload": jsonb(
            {"messages": raw.get("messages"), "model_parameters": raw.get("model_parameters") or {}},
            max_payload_bytes,
        ),
        "ended_at": end,
        "status": status,
        "prompt_tokens": _num(raw.get("prompt_tokens"), int),
        "completion_tokens": _num(raw.get("completion_tokens"), int),
        "total_tokens": _num(raw.get("total_tokens"), int),
        "cost_usd": _num(raw.get("response_cost"), float),
        "latency_ms": max(0.0, (end - start) * 1000.0),
        "body": jsonb(body, max_payload_bytes),
    }
