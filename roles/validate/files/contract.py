"""The validation contract (contract.json beside this file), for the control-node scripts.

One definition of what the play, the evidence writer and the verdict must agree on: the
`event=<name> <json>` line format, the shortest value treated as a secret, the manifest's
name and the list of evidence files. Stdlib only.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_DATA: dict[str, Any] = json.loads((Path(__file__).resolve().parent / "contract.json").read_text(encoding="utf-8"))

EVENT_LINE = re.compile(_DATA["event_line"]["regex"])
EVIDENCE_EVENTS: tuple[str, ...] = tuple(_DATA["event_line"]["evidence_events"])
FRESH_CONNECT_EVENT: str = _DATA["event_line"]["fresh_connect_event"]
SECRET_MIN_LENGTH: int = int(_DATA["secret_min_length"])
MANIFEST: str = _DATA["manifest"]
CARD_FILES: tuple[str, ...] = tuple(_DATA["evidence_files"]["card"])
JUDGED_FILES: tuple[str, ...] = tuple(_DATA["evidence_files"]["judged"])
# human-readable companions of judged files (never judged themselves)
EXTRA_FILES: tuple[str, ...] = tuple(_DATA["evidence_files"]["extra"])
CONFIG_FILES: tuple[str, ...] = tuple(_DATA["evidence_files"]["config"])
VERDICT_FILES: tuple[str, ...] = tuple(_DATA["evidence_files"]["verdict"])


def parse_event(line: str) -> tuple[str, dict[str, Any]] | None:
    """(name, payload) of an `event=<name> {json}` line (anywhere in a journal line), else None."""
    m = EVENT_LINE.search(line)
    if not m:
        return None
    try:
        payload = json.loads(m.group("payload"))
    except ValueError:
        return None
    return (m.group("name"), payload) if isinstance(payload, dict) else None


def is_secret(value: object) -> bool:
    """Values shorter than the contract's minimum are not treated as secrets (masking "a"
    would shred the evidence; the vault's values are long random strings)."""
    return value is not None and len(str(value)) >= SECRET_MIN_LENGTH
