"""The writer's counters and the stats file other processes read (`litellm-pglog stats`,
validate.yml): state_dir/stats-<pid>.json, replaced atomically.

Counters, all in records:
  enqueued    accepted by submit()
  written     committed by the live path        replayed    committed from the spool/memory
  spooled     written to the spool              spool_full  held in memory: the spool was full
  duplicates  already stored, not written again failed      refused by PostgreSQL (rejected file)
  dropped     given up, each logged (event=dropped); 0 in normal operation
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from .events import emit

COUNTERS = ("enqueued", "written", "spooled", "replayed", "failed", "duplicates", "dropped", "spool_full")


def write_stats_file(state_dir: str, snapshot: dict[str, Any]) -> None:
    path = os.path.join(state_dir, f"stats-{os.getpid()}.json")
    try:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(snapshot, fh, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        emit("stats_write_failed", logging.WARNING, path=path, error=str(exc))
