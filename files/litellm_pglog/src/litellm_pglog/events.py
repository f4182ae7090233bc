"""Structured log lines: `event=<name> <json>` on logger `litellm_pglog` (stderr -> journal).

The json is one line, sorted keys, so `journalctl | grep event=connect` is the evidence.
Secrets never pass through here: callers mask DSNs (engine.masked_dsn) and log key hashes only.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

logger = logging.getLogger("litellm_pglog")


def _ensure_handler() -> None:
    # LiteLLM configures its own loggers, not ours: without a handler our lines would go
    # nowhere under the proxy. One stderr handler, added once, not propagated twice.
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def emit(name: str, level: int = logging.INFO, **fields: Any) -> None:
    _ensure_handler()
    if logger.isEnabledFor(level):
        logger.log(level, "event=%s %s", name, json.dumps(fields, sort_keys=True, default=str))
