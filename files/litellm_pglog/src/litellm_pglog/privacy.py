"""The payload capture policy: what of a call's text may leave the gateway process.

  full      prompts and completions stored as LiteLLM hands them (the default, as before)
  redacted  everything stored, but each match of a redaction pattern inside any string (object
            keys included) becomes "[REDACTED:<name>]"
  metadata  no message text at all: the payload keeps the message roles and their sizes and the
            scalar model parameters; a success body keeps ids, model, usage and finish reasons;
            an error keeps its code and class. What is left is redacted too.

Applied by records.prepare in the writer thread, before a row is serialised: the spool, the
rejected file, the database (and so any backup or dump of it) only ever hold the policy's
output. The hand-off queue holds the original for the milliseconds until its batch is taken.

Patterns: a JSON list of {"name", "regex", "luhn"} (PGLOG_REDACT_PATTERNS_FILE; the built-in
list below when unset). "luhn": true keeps a match whose digits fail the Luhn check, so order
numbers and timestamps of card length are not masked. The patterns are combined into one
alternation (one scan per string); where two match at the same place, the earlier one wins.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

MODES = ("full", "redacted", "metadata")

# Names are what a reader of a redacted row sees; keep them short and stable.
DEFAULT_PATTERNS: tuple[dict[str, Any], ...] = (
    {"name": "email", "regex": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
     "requires": ["@"]},
    # OpenAI (sk-…, sk-proj-…), Anthropic (sk-ant-api03-…), and LiteLLM virtual keys (sk-…)
    {"name": "api_key", "regex": r"sk-(?<![A-Za-z0-9]sk-)[A-Za-z0-9_-]{20,}"},
    {"name": "aws_access_key", "regex": r"A[KS]IA(?<![A-Za-z0-9]A[KS]IA)[0-9A-Z]{16}(?![0-9A-Za-z])"},
    {"name": "google_api_key", "regex": r"AIza(?<![A-Za-z0-9]AIza)[0-9A-Za-z_-]{35}"},
    {"name": "github_token", "regex": r"g(?:h[pousr]|ithub_pat)_(?<![A-Za-z0-9]gh._)(?<![A-Za-z0-9]github_pat_)"
                                      r"[A-Za-z0-9_]{30,}"},
    {"name": "slack_token", "regex": r"xox[abprs]-(?<![A-Za-z0-9]xox.-)[A-Za-z0-9-]{10,}"},
    {"name": "bearer_token", "regex": r"[Bb](?<![A-Za-z0-9][Bb])(?i:earer)\s+[A-Za-z0-9._~+/=-]{16,}",
     "requires": ["earer", "EARER"]},
    # 13-19 digits, spaces or dashes between them; masked only when the Luhn check passes
    {"name": "card_number", "regex": r"\d(?<!\d\d)(?:[ -]?\d){12,18}(?!\d)", "luhn": True,
     "requires": list("0123456789")},
)


class PolicyError(ValueError):
    """A capture mode or redaction pattern that cannot be used (the service refuses to start)."""


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


@dataclass(frozen=True)
class _Pattern:
    name: str
    regex: re.Pattern[str]
    luhn: bool
    requires: tuple[str, ...]  # literals of which one must be in the text (a C-speed `in`)

    def sub(self, text: str) -> str:
        if self.requires and not any(lit in text for lit in self.requires):
            return text
        return self.regex.sub(self._replace, text)

    def _replace(self, m: re.Match[str]) -> str:
        if self.luhn and not luhn_ok("".join(ch for ch in m.group(0) if ch.isdigit())):
            return m.group(0)
        return f"[REDACTED:{self.name}]"


class Patterns(tuple):
    """The compiled pattern list, applied one after the other. Each pattern is its own regex
    (its flags, groups and back-references cannot clash with another's). Speed: Python's re
    scans fast only from a literal prefix, so the built-ins start with one and put their word
    boundary in a look-behind after it; those that cannot (e-mail, bearer, card number) are
    tried only on text holding one of their `requires` literals (measured, 1 KB of prose:
    ~12-15 us per scan without a literal prefix, ~0.5-1 us with one)."""

    def sub(self, text: str) -> str:
        for p in self:
            text = p.sub(text)
        return text


def compile_patterns(specs: Any) -> Patterns:
    """Validate a pattern list (from a file or the built-in one); PolicyError names the bad entry."""
    if not isinstance(specs, list) or not specs:
        raise PolicyError("redaction patterns: expected a non-empty JSON list of {name, regex[, luhn, requires]}")
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("regex"), str):
            raise PolicyError(f"redaction pattern #{i}: expected {{\"name\": str, \"regex\": str}}")
        name = spec["name"]
        if not re.fullmatch(r"[a-z0-9_]{1,40}", name):
            raise PolicyError(f"redaction pattern #{i}: name {name!r} is not [a-z0-9_]{{1,40}}")
        try:
            rx = re.compile(spec["regex"])
        except re.error as exc:
            raise PolicyError(f"redaction pattern {name!r}: {exc}") from None
        if rx.search("") is not None:
            raise PolicyError(f"redaction pattern {name!r} matches the empty string")
        requires = spec.get("requires") or []
        if not isinstance(requires, list) or not all(isinstance(r, str) and r for r in requires):
            raise PolicyError(f"redaction pattern {name!r}: requires must be a list of non-empty strings")
        out.append(_Pattern(name, rx, bool(spec.get("luhn", False)), tuple(requires)))
    return Patterns(out)


def load_patterns(path: str | None) -> Patterns:
    if not path:
        return compile_patterns(list(DEFAULT_PATTERNS))
    try:
        with open(path, encoding="utf-8") as f:
            specs = json.load(f)
    except (OSError, ValueError) as exc:
        raise PolicyError(f"redaction patterns file {path}: {exc}") from None
    return compile_patterns(specs)


def _walk(value: Any, fn: Callable[[str], str], depth: int = 0) -> Any:
    """A copy of a JSON-like value with fn applied to every string (keys too). Depth-bounded
    like records' other walkers: below 200 levels a value is kept as its string form, masked."""
    if isinstance(value, str):
        return fn(value)
    if depth > 200:
        return fn(str(value))
    if isinstance(value, dict):
        return {fn(k) if isinstance(k, str) else k: _walk(v, fn, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_walk(v, fn, depth + 1) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return fn(str(value))  # what json.dumps(default=str) would have stored


def _size(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    return len(json.dumps(content, default=str, ensure_ascii=False))


@dataclass(frozen=True)
class Policy:
    mode: str = "full"
    patterns: Patterns | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PolicyError(f"payload capture mode {self.mode!r} is not one of {', '.join(MODES)}")

    @classmethod
    def from_env(cls, env: Any) -> "Policy":
        mode = (env.get("PGLOG_LOG_PAYLOADS") or "full").strip()
        patterns = load_patterns(env.get("PGLOG_REDACT_PATTERNS_FILE")) if mode != "full" else None
        return cls(mode, patterns)

    def mask(self, text: str) -> str:
        return self.patterns.sub(text) if self.patterns else text

    def _clean(self, value: Any) -> Any:
        return _walk(value, self.mask) if self.patterns else value

    # ---- what records.prepare stores ----------------------------------------------------------
    def payload(self, messages: Any, model_parameters: Any) -> Any:
        if self.mode == "full":
            return {"messages": messages, "model_parameters": model_parameters}
        if self.mode == "redacted":
            return self._clean({"messages": messages, "model_parameters": model_parameters})
        shape = []
        for m in messages if isinstance(messages, list) else []:
            if isinstance(m, dict):
                shape.append({"role": m.get("role"), "chars": _size(m.get("content") or "")})
        params = {k: v for k, v in (model_parameters or {}).items()
                  if isinstance(v, (int, float, bool)) or v is None} if isinstance(model_parameters, dict) else {}
        return self._clean({"messages": shape, "model_parameters": params, "capture": "metadata"})

    def refused(self, request: Any) -> Any:
        """A body the guard refused (its summary: method, path, sizes, maybe a model name)."""
        return request if self.mode == "full" else self._clean(request)

    def body(self, body: Any) -> Any:
        if self.mode == "full":
            return body
        if self.mode == "redacted":
            return self._clean(body)
        return self._clean(_body_metadata(body))


def _body_metadata(body: Any) -> Any:
    if not isinstance(body, dict):
        return {"capture": "metadata"}
    out: dict[str, Any] = {"capture": "metadata"}
    for k in ("id", "model", "object", "created", "usage", "system_fingerprint"):
        if k in body:
            out[k] = body[k]
    if isinstance(body.get("choices"), list):
        out["choices"] = [{"index": c.get("index"), "finish_reason": c.get("finish_reason")}
                          for c in body["choices"] if isinstance(c, dict)]
    error = body.get("error")
    if isinstance(error, dict):
        out["error"] = {k: error[k] for k in ("error_code", "error_class") if k in error}
    if isinstance(body.get("delivery"), dict):
        out["delivery"] = body["delivery"]
    if isinstance(body.get("response"), dict):
        out["response"] = _body_metadata(body["response"])
    return out


FULL = Policy()
