#!/usr/bin/env python3
"""Masks secrets in evidence text and writes the files (stdlib only, control node).

validate.yml never writes raw output to disk: write_evidence.py renders it and calls
write_all() here. Files are masked; config files are also redacted key by key
(secret-looking keys whose value is not an os.environ/ indirection). The known
secret values (the inventory's passwords and keys, the env file's secret values)
are masked wherever they appear; the generic shapes of credentials too. Besides those exact values,
the generic shapes of credentials are masked as a second line of defence:
passwords in DSNs (scheme://user:PASSWORD@host), password=... pairs,
Bearer tokens and sk-... keys.
"""
from __future__ import annotations

import re
from pathlib import Path

import contract  # beside this script (sys.path[0] when run as a script)

MASK = "********"

_GENERIC = [
    # postgresql://user:secret@host  -> postgresql://user:********@host
    re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s\"']+:)(?!\*{8}@)[^@\s\"']+(?P<post>@)", re.I),
    # password=secret, "password": "secret", PGLOG_DB_PASSWORD=secret
    # (the secret word must end the key: password_encryption or prompt_tokens are not secrets)
    re.compile(r"(?P<pre>\b[\w-]*(?:password|passwd|passphrase|cipher[_-]?pass|secret|secret[_-]?key"
               r"|api[_-]?key|master[_-]?key"
               r"|access[_-]?token|auth[_-]?token)[\"']?\s*[:=]\s*[\"']?)(?!\*{8})(?!os\.environ/)"
               r"[^\s\"',}]+", re.I),
    # Authorization: Bearer xyz
    re.compile(r"(?P<pre>\bBearer\s+)(?!\*{8})(?!<redacted>)[^\s\"',]+", re.I),
    # OpenAI/LiteLLM-style keys anywhere
    re.compile(r"(?P<pre>)\bsk-[A-Za-z0-9_-]{6,}"),
]

# YAML keys whose value is a secret unless it is an indirection (os.environ/...).
_SECRET_KEY = re.compile(
    r"(password|passwd|secret|api[_-]?key|master[_-]?key|private[_-]?key|access[_-]?token|auth[_-]?token"
    r"|credential|database_url|^dsn$)",
    re.I)
_YAML_SCALAR = re.compile(r"^(?P<indent>\s*-?\s*)(?P<key>[\w.-]+)(?P<sep>\s*:\s+)(?P<value>\S.*?)\s*$")
_INDIRECT = re.compile(r"^[\"']?(os\.environ/|\$\{|\{\{)")


def load_secrets(values: list) -> list[str]:
    """The exact secret values to mask, longest first (so a secret that
    contains another is masked whole)."""
    if not isinstance(values, list):
        raise ValueError("secrets must be a JSON list of strings")
    secrets = {str(v) for v in values if contract.is_secret(v)}
    return sorted(secrets, key=len, reverse=True)


def mask(text: str, secrets: list[str]) -> str:
    """Masks the known secret values, then the generic credential shapes."""
    for value in secrets:
        text = text.replace(value, MASK)
    for pattern in _GENERIC:
        text = pattern.sub(lambda m: m.group("pre") + MASK + (m.groupdict().get("post") or ""), text)
    return text


def redact_config(text: str, secrets: list[str]) -> str:
    """Redacts a LiteLLM config.yaml line by line, keeping layout and comments:
    any `key: value` whose key looks secret and whose value is not an
    os.environ/ indirection is replaced, then `mask` runs over everything."""
    out = []
    for line in text.splitlines():
        m = _YAML_SCALAR.match(line)
        if (m and _SECRET_KEY.search(m.group("key")) and not _INDIRECT.match(m.group("value"))
                and not m.group("value").startswith(("#", "|", ">"))):
            line = f"{m.group('indent')}{m.group('key')}{m.group('sep')}\"{MASK}\""
        out.append(line)
    return mask("\n".join(out) + "\n", secrets)


def write_all(run_dir: Path, request: dict) -> dict[str, int]:
    """Writes every evidence file of `request` into run_dir, masked.

    request = {"secrets": [...], "files": {name: raw text}, "config": {name: raw yaml}}
    """
    secrets = load_secrets(request.get("secrets") or [])
    written = {}
    jobs = [(n, t, False) for n, t in (request.get("files") or {}).items()]
    jobs += [(n, t, True) for n, t in (request.get("config") or {}).items()]
    for name, raw, is_config in jobs:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad evidence file name {name!r}")
        text = redact_config(raw or "", secrets) if is_config else mask(raw or "", secrets)
        if not text.endswith("\n"):
            text += "\n"
        dest = run_dir / name
        dest.write_text(text, encoding="utf-8")
        dest.chmod(0o640)
        written[name] = len(text.encode())
    return written

