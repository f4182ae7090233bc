"""The writer thread: the only place where log records meet the database.

Flow: callback -> submit() (SimpleQueue.put, no I/O) -> collector thread takes a batch (at most
PGLOG_BATCH_SIZE records, at most PGLOG_FLUSH_MS after the first one) and prepare()s each record
-> small queue -> inserter thread (the only one touching DB and spool) -> one transaction: multi-row INSERT INTO requests ... ON CONFLICT (call_id) DO NOTHING
RETURNING id, call_id, then the matching responses rows -> COMMIT.

Database unreachable (connection-level errors): the batch is retried twice quickly, then written
to the on-disk spool and the writer goes offline: later batches go straight to the spool, and
every backoff interval (0.5 s doubling to 10 s) the spool is replayed in order; when that
succeeds the writer is online again. At start the spool left by earlier runs (any pid) is
replayed first.

Decisions (also in docs/FINDINGS.md):
- Duplicates (same call_id twice, e.g. LiteLLM delivering twice or a replay after a crash
  between COMMIT and unlink): the first row wins, nothing is overwritten; each duplicate is
  counted (`duplicates`) and logged as `event=duplicate` WARNING with its call_id.
- Rows PostgreSQL rejects as data (not connectivity): the batch is bisected down to the bad
  records; those go to spool/rejected-<pid>.jsonl with the error, counted as `failed`, ERROR log.
- Spool full (PGLOG_SPOOL_MAX_MB): batches are kept in memory (counter `spool_full`, ERROR
  `event=spool_full`) up to PGLOG_MEMORY_MAX_RECORDS; beyond that, and when the in-memory
  queue itself exceeds that bound, records are dropped: counter `dropped`, ERROR
  `event=dropped` with call ids. `dropped` is 0 in normal operation.
- Shutdown (atexit, which runs after uvicorn's graceful shutdown): LiteLLM's own pending
  logging tasks are flushed first, then the queue is written to the database until
  PGLOG_DRAIN_TIMEOUT_S, then whatever is left goes to the spool. Records arriving after that
  are spooled synchronously by submit().
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import deque
from typing import Any

import psycopg2
import psycopg2.extras
from sqlalchemy import Engine

from . import records
from .config import Settings
from .dberrors import CONNECTION_ERRORS as _CONN_ERRORS
from .dberrors import is_connection_error as _is_conn_error
from .dberrors import short as _short
from .engine import PoolStats, make_engine
from .events import emit
from .schema import SchemaMismatch, check_revision
from .spool import Spool, SpoolFull

COUNTERS = ("enqueued", "written", "spooled", "replayed", "failed", "duplicates", "dropped", "spool_full")

_REQ_SQL = (
    "INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, end_user, tags, payload)"
    " VALUES %s ON CONFLICT (call_id) DO NOTHING RETURNING id, call_id"
)
_REQ_TPL = "(%s, to_timestamp(%s), %s, %s, %s, %s, %s, %s::jsonb, %s::jsonb)"
_RESP_SQL = (
    "INSERT INTO responses (request_id, created_at, status, prompt_tokens, completion_tokens, total_tokens,"
    " cost_usd, latency_ms, body) VALUES %s ON CONFLICT (request_id) DO NOTHING"
)
_RESP_TPL = "(%s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s::jsonb)"

_RETRY_DELAYS = (0.1, 0.3)
_BACKOFF_MIN, _BACKOFF_MAX = 0.5, 10.0
_STOP = object()


def insert_batch(engine: Engine, rows: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Insert prepared rows in ONE transaction. Returns (rows written, duplicate call ids)."""
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        returned = psycopg2.extras.execute_values(
            cur, _REQ_SQL,
            [(r["call_id"], r["created_at"], r["model"], r["call_type"], r["stream"], r["api_key_hash"],
              r["end_user"], r["tags"], r["payload"]) for r in rows],
            template=_REQ_TPL, page_size=len(rows), fetch=True,
        )
        ids = {call_id: rid for rid, call_id in returned}
        resp, dups, seen = [], [], set()
        for r in rows:
            rid = ids.get(r["call_id"])
            if rid is None or r["call_id"] in seen:
                dups.append(r["call_id"])
                continue
            seen.add(r["call_id"])
            resp.append((rid, r["ended_at"], r["status"], r["prompt_tokens"], r["completion_tokens"],
                         r["total_tokens"], r["cost_usd"], r["latency_ms"], r["body"]))
        if resp:
            psycopg2.extras.execute_values(cur, _RESP_SQL, resp, template=_RESP_TPL, page_size=len(resp))
        conn.commit()
        cur.close()
        return len(resp), dups
    except _CONN_ERRORS:
        conn.invalidate()  # the pool must not hand this connection out again
        raise
    except BaseException:
        try:
            conn.rollback()
        except Exception:
            conn.invalidate()
        raise
    finally:
        conn.close()


class Writer:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.pool_stats = PoolStats()
        self.engine = engine or make_engine(settings, self.pool_stats)
        self.spool = Spool(settings.spool_dir, settings.spool_max_mb)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._q: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._memory: deque[list[dict[str, Any]]] = deque()  # batches the full spool could not take
        self._memory_records = 0
        self._online = False
        self._backoff = _BACKOFF_MIN
        self._next_probe = 0.0
        self._stopping = threading.Event()
        self._stopped = False
        self._lock = threading.Lock()  # guards the synchronous spool path after stop
        self._threads: list[threading.Thread] = []
        # collector -> inserter: prepared batches; small, so a slow database pushes back on the
        # collector and the backlog stays in the SimpleQueue (bounded by memory_max_records)
        self._prepared: "queue.Queue[Any]" = queue.Queue(maxsize=4)
        self._last_stats = time.monotonic()
        self._last_drop_log = 0.0

    # ---- producer side (event loop) -------------------------------------------------------
    def submit(self, raw: dict[str, Any]) -> None:
        if self._stopped:
            self._late(raw)
            return
        if self._q.qsize() >= self.settings.memory_max_records:
            self._drop([raw.get("id")], "queue above PGLOG_MEMORY_MAX_RECORDS")
            return
        self.counters["enqueued"] += 1
        self._q.put(raw)

    def _late(self, raw: dict[str, Any]) -> None:
        """After shutdown drain: spool synchronously (only LiteLLM's atexit flush gets here)."""
        with self._lock:
            self.counters["enqueued"] += 1
            self._to_spool([self._prepare(raw)])

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check the schema (refuse to start on mismatch), then start the thread."""
        self.spool.ensure()
        os.makedirs(self.settings.state_dir, exist_ok=True)
        try:
            with self.engine.connect() as conn:
                head = check_revision(conn)
            self._online = True
            emit("writer_start", revision=head, online=True, spool_segments=len(self.spool.segments()))
        except SchemaMismatch as exc:
            emit("startup_refused", logging.ERROR, reason=str(exc))
            raise
        except _CONN_ERRORS + (psycopg2.DatabaseError,) as exc:
            emit("writer_start", logging.WARNING, online=False, reason=_short(exc))
        except Exception as exc:  # sqlalchemy wraps DBAPI errors
            if _is_conn_error(exc):
                emit("writer_start", logging.WARNING, online=False, reason=_short(exc))
            else:
                raise
        self._threads = [
            threading.Thread(target=self._collect_loop, name="litellm-pglog-collect", daemon=True),
            threading.Thread(target=self._insert_loop, name="litellm-pglog-insert", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float | None = None) -> None:
        """Drain to the database within the deadline, the rest to the spool. Idempotent."""
        if self._stopped:
            return
        timeout = self.settings.drain_timeout_s if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._q.put(_STOP)
        end = time.monotonic() + timeout + self.settings.connect_timeout_s + 5
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        with self._lock:
            self._stopped = True
            # only if the thread hung: spool what it did not take
            leftovers = [self._prepare(item) for item in _drain(self._q)]
            for prepared in _drain(self._prepared):
                leftovers.extend(prepared)
            if leftovers:
                self._to_spool(leftovers)
        self.write_stats()
        emit("shutdown", counters=dict(self.counters), spool_segments=len(self.spool.segments()))

    # ---- writer thread -------------------------------------------------------------------------
    def _collect_loop(self) -> None:
        """Thread 1: take records off the SimpleQueue, batch, prepare (serialise). Runs while
        the inserter waits on the server, so serialising batch k+1 overlaps inserting batch k."""
        while True:
            batch, stop_seen = self._collect()
            if batch:
                self._prepared.put([self._prepare(r) for r in batch])
            if stop_seen:
                pending = _drain(self._q)
                for i in range(0, len(pending), self.settings.batch_size):
                    self._prepared.put([self._prepare(r) for r in pending[i:i + self.settings.batch_size]])
                self._prepared.put(_STOP)
                return

    def _insert_loop(self) -> None:
        """Thread 2: the only one that talks to the database and the spool."""
        if self._online:
            self._replay()
        while True:
            wait = min(self.settings.stats_interval_s, _BACKOFF_MAX if self._online else self._backoff)
            try:
                item = self._prepared.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._drain()
                return
            if item:
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    self._to_spool(item)
                else:
                    self._handle(item)
            now = time.monotonic()
            if not self._online and now >= self._next_probe and not self._stopping.is_set():
                self._replay()
            if now - self._last_stats >= self.settings.stats_interval_s:
                self.log_stats()

    def _collect(self) -> tuple[list[Any], bool]:
        settings = self.settings
        try:
            first = self._q.get(timeout=1.0)
        except queue.Empty:
            return [], False
        if first is _STOP:
            return [], True
        batch = [first]
        deadline = time.monotonic() + settings.flush_ms / 1000.0
        while len(batch) < settings.batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            batch.append(item)
        return batch, False

    def _drain(self) -> None:
        """Shutdown, in the inserter after the last prepared batch: offline -> one last replay
        attempt within the deadline; then the batches the full spool could not take."""
        if not self._online and time.monotonic() < self._deadline:
            self._replay()
        while self._memory:
            chunk = self._memory.popleft()
            self._memory_records -= len(chunk)
            if self._online and time.monotonic() < self._deadline:
                self._handle(chunk)
            else:
                self._to_spool(chunk)

    def _prepare(self, raw: dict[str, Any]) -> dict[str, Any]:
        try:
            return records.prepare(raw, self.settings.max_payload_bytes)
        except Exception as exc:  # a record we cannot even serialise: keep what we can
            emit("prepare_error", logging.ERROR, call_id=str(raw.get("id")), error=_short(exc))
            return records.prepare({k: raw.get(k) for k in ("id", "startTime", "endTime", "status")},
                                   self.settings.max_payload_bytes)

    def _handle(self, rows: list[dict[str, Any]]) -> None:
        if not self._online:
            self._to_spool(rows)
            return
        for attempt, delay in enumerate((0.0,) + _RETRY_DELAYS):
            if delay:
                time.sleep(delay)
            try:
                self._insert(rows, "written")
                return
            except Exception as exc:
                if not _is_conn_error(exc):
                    self._bisect(rows, exc)
                    return
                last = exc
        self._go_offline(last)
        self._to_spool(rows)

    def _insert(self, rows: list[dict[str, Any]], counter: str) -> None:
        written, dups = insert_batch(self.engine, rows)
        self.counters[counter] += written
        if dups:
            self.counters["duplicates"] += len(dups)
            for call_id in dups[:20]:
                emit("duplicate", logging.WARNING, call_id=call_id, source=counter,
                     action="kept the first row, ignored this delivery")
            if len(dups) > 20:
                emit("duplicate", logging.WARNING, more=len(dups) - 20, source=counter)

    def _bisect(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        if len(rows) == 1:
            self.counters["failed"] += 1
            emit("rejected", logging.ERROR, call_id=rows[0]["call_id"], error=_short(exc),
                 kept_in=os.path.join(self.spool.directory, f"rejected-{os.getpid()}.jsonl"))
            self.spool.reject(rows, _short(exc))
            return
        mid = len(rows) // 2
        for half in (rows[:mid], rows[mid:]):
            try:
                self._insert(half, "written")
            except Exception as sub:
                if _is_conn_error(sub):
                    self._go_offline(sub)
                    self._to_spool(half)
                else:
                    self._bisect(half, sub)

    def _go_offline(self, exc: Exception) -> None:
        if self._online:
            emit("db_offline", logging.ERROR, error=_short(exc), action="spooling to disk")
        self._online = False
        self._next_probe = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _to_spool(self, rows: list[dict[str, Any]]) -> None:
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
        if self._memory_records + len(rows) <= self.settings.memory_max_records:
            self._memory.append(rows)
            self._memory_records += len(rows)
            self.counters["spool_full"] += len(rows)
            emit("spool_full", logging.ERROR, reason=reason, held_in_memory=self._memory_records)
        else:
            self._drop([r["call_id"] for r in rows], reason + "; memory bound reached")

    def _drop(self, call_ids: list[Any], reason: str) -> None:
        self.counters["dropped"] += len(call_ids)
        emit("dropped", logging.ERROR, count=len(call_ids), total_dropped=self.counters["dropped"],
             reason=reason, call_ids=[str(c) for c in call_ids[:50]])

    def _replay(self) -> bool:
        """Replay all spool segments (ours and other processes'), oldest first, then the in-memory
        overflow. True if everything went in; on a connection error go (stay) offline."""
        try:
            if not self._online:
                with self.engine.connect() as conn:
                    check_revision(conn)
            for name in self.spool.segments():
                with self.spool.claim(name) as rows:
                    if rows is None:
                        continue
                    if rows:
                        self._insert_or_bisect(rows)
                    self.spool.remove(name)
            while self._memory:
                chunk = self._memory[0]
                self._insert_or_bisect(chunk)
                self._memory.popleft()
                self._memory_records -= len(chunk)
        except SchemaMismatch as exc:
            emit("schema_mismatch", logging.ERROR, error=str(exc), action="keeping records in the spool")
            self._online = False
            self._next_probe = time.monotonic() + _BACKOFF_MAX
            return False
        except Exception as exc:
            if not _is_conn_error(exc):
                raise
            self._go_offline(exc)
            return False
        if not self._online:
            emit("db_online", replayed=self.counters["replayed"])
        self._online = True
        self._backoff = _BACKOFF_MIN
        return True

    def _insert_or_bisect(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._insert(rows, "replayed")
        except Exception as exc:
            if _is_conn_error(exc):
                raise
            self._bisect(rows, exc)

    # ---- statistics ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "time": time.time(),
            "online": self._online,
            "counters": dict(self.counters),
            "pool": self.pool_stats.snapshot(self.engine),
            "queue_depth": self._q.qsize(),
            "memory_records": self._memory_records,
            "spool_segments": len(self.spool.segments()),
        }

    def log_stats(self) -> None:
        self._last_stats = time.monotonic()
        snap = self.snapshot()
        emit("pool_stats", **snap)
        self.write_stats(snap)

    def write_stats(self, snap: dict[str, Any] | None = None) -> None:
        snap = snap or self.snapshot()
        path = os.path.join(self.settings.state_dir, f"stats-{os.getpid()}.json")
        try:
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(snap, fh, sort_keys=True)
            os.replace(tmp, path)
        except OSError as exc:
            emit("stats_write_failed", logging.WARNING, path=path, error=str(exc))


def _drain(q: Any) -> list[Any]:
    """Everything a queue holds right now, without blocking and without _STOP markers."""
    items = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return items
        if item is not _STOP:
            items.append(item)
