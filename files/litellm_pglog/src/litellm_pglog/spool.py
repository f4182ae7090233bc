"""On-disk spool: prepared batches that could not reach the database.

Layout: one segment file per batch, `seg-<time_ns:020d>-<pid>-<seq:06d>.jsonl`, one prepared
record per line. Written to a dot-temp file, fsync'd, renamed, directory fsync'd: a segment is
either complete or absent. Names sort by creation time across processes, so several workers can
share one directory and replay stays in order. A replaying process takes an exclusive,
non-blocking flock on a segment; a segment locked by another process is skipped (that process
is replaying it). Inserts are idempotent (ON CONFLICT on the key the logger gave the record at
hand-off, see insert.py), so a crash between COMMIT and unlink only re-delivers rows that are
then counted as duplicates.

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
        """Durably store one batch as a new segment; raises SpoolFull or OSError."""
        self.ensure()
        blob = _lines(records)
        if self.size_bytes() + len(blob) > self.max_bytes:
            raise SpoolFull(f"spool {self.directory} would exceed {self.max_bytes} bytes")
        name = f"{SEGMENT_PREFIX}{time.time_ns():020d}-{os.getpid()}-{next(self._seq):06d}{SEGMENT_SUFFIX}"
        self._put(name, blob)
        return name

    def rewrite(self, name: str, records: list[dict[str, Any]]) -> None:
        """Replace a claimed segment by the records still left of it (a replay that was cut
        short): same name, so it keeps its place in the order. Atomic like write(): a crash
        leaves either the old segment (its delivered rows then come back as duplicates) or
        the new one, never a partial file."""
        try:  # a temp file left by a crash in an earlier rewrite of this segment (we hold its lock)
            os.unlink(os.path.join(self.directory, "." + name + ".tmp"))
        except FileNotFoundError:
            pass
        self._put(name, _lines(records))

    def _put(self, name: str, blob: bytes) -> None:
        tmp = os.path.join(self.directory, "." + name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.directory, name))
        self._fsync_dir()

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


def _lines(records: list[dict[str, Any]]) -> bytes:
    """One JSON object per line. The stdlib encoder on purpose: it round-trips what prepared
    rows may hold and orjson refuses or changes (NaN, integers beyond 64 bits)."""
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode("utf-8")
