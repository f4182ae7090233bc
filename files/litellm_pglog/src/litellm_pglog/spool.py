"""On-disk spool: prepared batches that could not reach the database.

Layout: one segment file per batch, `seg-<time_ns:020d>-<pid>-<seq:06d>.jsonl`, one prepared
record per line. Written to a dot-temp file, fsync'd, renamed, directory fsync'd: a segment is
either complete or absent. Names sort by creation time across processes, so several workers can
share one directory and replay stays in order. A replaying process takes an exclusive,
non-blocking flock on a segment; a segment locked by another process is skipped (that process
is replaying it). Inserts are idempotent (ON CONFLICT (created_at, event_id) DO NOTHING, the
key the logger gave the record at hand-off), so a crash between COMMIT and unlink only
re-delivers rows that are then counted as duplicates.

Rejected records (PostgreSQL refused them as data) go to `rejected-<pid>.jsonl`, never
replayed automatically, never deleted.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".jsonl"


class SpoolFull(Exception):
    """Writing would exceed PGLOG_SPOOL_MAX_MB."""


class Spool:
    def __init__(self, directory: str, max_mb: int) -> None:
        self.directory = directory
        self.max_bytes = max_mb * 1024 * 1024
        self._seq = itertools.count()

    def ensure(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)

    def segments(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if n.startswith(SEGMENT_PREFIX) and n.endswith(SEGMENT_SUFFIX))

    def size_bytes(self) -> int:
        total = 0
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.name.startswith(SEGMENT_PREFIX):
                        try:
                            total += entry.stat().st_size
                        except FileNotFoundError:
                            pass
        except FileNotFoundError:
            return 0
        return total

    def write(self, records: list[dict[str, Any]]) -> str:
        """Durably store one batch; raises SpoolFull or OSError."""
        self.ensure()
        data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
        blob = data.encode("utf-8")
        if self.size_bytes() + len(blob) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} would exceed {self.max_bytes} bytes")
        name = f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{SEGMENT_SUFFIX}"
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.directory, name))
        self._fsync_dir()
        return name

    def _fsync_dir(self) -> None:
        dfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @contextmanager
    def claim(self, name: str) -> Iterator[list[dict[str, Any]] | None]:
        """Lock a segment and yield its records (None if another process holds it or it is gone).
        The caller calls `remove(name)` inside the block once the records are committed."""
        path = os.path.join(self.directory, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None
                return
            if not os.path.exists(path):  # replayed and removed by another process meanwhile
                yield None
                return
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as fh:
                records = [json.loads(line) for line in fh if line.strip()]
            yield records
        finally:
            os.close(fd)  # releases the lock

    def remove(self, name: str) -> None:
        try:
            os.unlink(os.path.join(self.directory, name))
        except FileNotFoundError:
            pass
        self._fsync_dir()

    def reject(self, records: list[dict[str, Any]], error: str) -> None:
        self.ensure()
        path = os.path.join(self.directory, f"rejected-{os.getpid()}.jsonl")
        with open(path, "a", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps({"error": error, "record": r}, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def rejected_count(self) -> int:
        n = 0
        try:
            for name in os.listdir(self.directory):
                if name.startswith("rejected-"):
                    with open(os.path.join(self.directory, name), "rb") as fh:
                        n += sum(1 for _ in fh)
        except FileNotFoundError:
            pass
        return n
