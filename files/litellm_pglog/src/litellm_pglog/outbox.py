"""Where records wait while the database cannot take them -- and the only place that ever gives
one up, always counted and logged.

keep(rows)    the spool (fsync'd segment files: they survive a crash or restart, see spool.py);
              spool full or unwritable -> held in memory, up to memory_max_records in all
              (counter `spool_full`, ERROR event=spool_full); beyond that -> dropped
              (counter `dropped`, ERROR event=dropped with the keys). `dropped` is 0 in
              normal operation; it is the price of a bounded memory.
backlog()     everything waiting, oldest first: spool segments of every process sharing the
              directory (each locked while we hold it), then the batches held in memory. The
              replay delivers each Pending item and settles it with done() or keep(rest).
reject(rows)  rows PostgreSQL refused as data -> rejected-<pid>.jsonl, never replayed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any, Callable, Iterator

from .events import emit
from .insert import DEDUPE_KEY
from .spool import Spool, SpoolFull

Row = dict[str, Any]


class Pending:
    """One batch of the backlog, claimed. Settle it: done() once all of it is in the database,
    keep(rows) with the rows still to deliver if the database went away part-way."""

    def __init__(self, rows: list[Row], done: Callable[[], None], keep: Callable[[list[Row]], None]) -> None:
        self.rows = rows
        self.done = done
        self.keep = keep


class Outbox:
    def __init__(self, spool: Spool, memory_max_records: int, counters: dict[str, int]) -> None:
        self.spool = spool
        self.memory_max_records = memory_max_records
        self.counters = counters
        self._memory: deque[list[Row]] = deque()  # batches the spool could not take, oldest first
        self.memory_records = 0
        self._drop_lock = threading.Lock()  # drops are counted from the event loop and the writer

    def keep(self, rows: list[Row]) -> None:
        if not rows:
            return
        try:
            self.spool.write(rows)
            self.counters["spooled"] += len(rows)
            return
        except SpoolFull as exc:
            reason = str(exc)
        except OSError as exc:
            reason = f"spool write failed: {exc}"
        if self.memory_records + len(rows) <= self.memory_max_records:
            self._memory.append(rows)
            self.memory_records += len(rows)
            self.counters["spool_full"] += len(rows)
            emit("spool_full", logging.ERROR, reason=reason, held_in_memory=self.memory_records)
        else:
            self.drop([r.get(DEDUPE_KEY) for r in rows], reason + "; memory bound reached")

    def drop(self, keys: list[Any], reason: str) -> None:
        with self._drop_lock:
            self.counters["dropped"] += len(keys)
            total = self.counters["dropped"]
        emit("dropped", logging.ERROR, count=len(keys), total_dropped=total, reason=reason,
             event_ids=[str(k) for k in keys[:50]])

    def reject(self, rejected: list[tuple[Row, str]]) -> int:
        """Keep refused rows in the rejected file; returns how many it took (the rest: dropped)."""
        kept = 0
        for row, error in rejected:
            try:
                self.spool.reject([row], error)
                kept += 1
            except OSError as exc:  # nowhere left to keep it: give it up, loudly
                self.drop([row.get(DEDUPE_KEY)], f"refused by the database ({error}); rejected file unwritable: {exc}")
        return kept

    def backlog(self) -> Iterator[Pending]:
        """Spool segments (ours and other processes'), then memory. Stop iterating to stop
        the replay: the segment in hand is unlocked and stays."""
        for name in self.spool.segments():
            with self.spool.claim(name) as rows:
                if rows is None:  # another process holds it, or it is gone
                    continue
                yield Pending(rows, lambda name=name: self._remove_segment(name),
                              lambda rest, name=name: self._rewrite_segment(name, rest))
        while self._memory:
            yield Pending(self._memory[0], self._forget_first, self._shrink_first)

    def held_in_memory(self) -> list[list[Row]]:
        """Take every batch held in memory (for the shutdown drain)."""
        batches = list(self._memory)
        self._memory.clear()
        self.memory_records = 0
        return batches

    def _remove_segment(self, name: str) -> None:
        try:
            self.spool.remove(name)
        except OSError as exc:  # it stays: its rows come back as duplicates, nothing is lost
            emit("spool_remove_failed", logging.ERROR, segment=name, error=str(exc))

    def _rewrite_segment(self, name: str, rest: list[Row]) -> None:
        try:
            self.spool.rewrite(name, rest)
        except OSError as exc:  # kept whole: the delivered part comes back as duplicates
            emit("spool_rewrite_failed", logging.WARNING, segment=name, error=str(exc))

    def _forget_first(self) -> None:
        self.memory_records -= len(self._memory.popleft())

    def _shrink_first(self, rest: list[Row]) -> None:
        self.memory_records -= len(self._memory[0]) - len(rest)
        self._memory[0] = rest
