"""The writer: one thread wiring the batcher, the delivery policy and the outbox together.

    callback --submit()--> Batcher --writer thread: next_batch(), records.prepare()-->
        Delivery.deliver() (insert.py: one statement per batch)
        `-- database away -> Outbox.keep() (spool, memory, drops)

One thread, not a collector plus an inserter: on two cores with the database beside it the
pipelining bought no throughput (bench/writer_throughput.py, same ratio), and every hand-off
between two threads is one more GIL switch taken from the proxy's event loop.

Online/offline: a batch the database could not take (after the delivery policy's retries) is
kept in the outbox and the writer goes offline: later batches go straight to the outbox, and
every backoff interval (0.5 s doubling to 10 s) the backlog is replayed, oldest first, by the
same delivery policy; when all of it went in the writer is online again. At start the backlog
left by earlier runs (any pid) is replayed first.

Decisions (also in docs/FINDINGS.md):
- Duplicates (the same record twice: same (created_at, event_id), chosen at hand-off, e.g. a
  replay after a crash between COMMIT and unlink): the first row wins, nothing is overwritten;
  each is counted (`duplicates`) and logged as `event=duplicate` WARNING with its event id.
  Two calls with the same LiteLLM call id are two events: both are stored.
- Rows PostgreSQL refuses as data: isolated by the delivery policy, kept in
  spool/rejected-<pid>.jsonl with the error, counted as `failed`, ERROR `event=rejected`.
- Memory bound: see outbox.py (spool full -> memory -> loud, counted drops); the hand-off
  queue itself is bounded by PGLOG_MEMORY_MAX_RECORDS too (drops counted the same way).
- A schema mismatch found while offline keeps the records in the backlog and waits 10 s.
- Shutdown (atexit, after uvicorn's graceful shutdown): LiteLLM's own pending logging tasks
  are flushed first (callback.py), then the queue goes to the database until
  PGLOG_DRAIN_TIMEOUT_S, then whatever is left to the spool. Records arriving after that are
  spooled synchronously by submit().
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from sqlalchemy import Engine

from . import records
from .batcher import Batcher
from .config import Settings
from .dberrors import is_connection_error, short
from .delivery import Delivery, Outcome
from .engine import PoolStats, make_engine
from .events import emit
from .insert import DEDUPE_KEY, insert_batch
from .metrics import Metrics
from .outbox import Outbox
from .schema import SchemaMismatch, check_revision
from .spool import Spool
from .stats import COUNTERS, write_stats_file

BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 10.0
_LOGGED_KEYS = 20  # duplicates logged by key per batch; the rest as a number


class Writer:
    def __init__(self, settings: Settings, engine: Engine | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        # Prometheus metrics (metrics.py): only this thread touches them, never the event loop.
        self.metrics = metrics or Metrics()
        self.pool_stats = PoolStats()
        self.engine = engine or make_engine(settings, self.pool_stats, pre_ping=False)
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.spool = Spool(settings.spool_dir, settings.spool_max_mb)
        self.outbox = Outbox(self.spool, settings.memory_max_records, self.counters)
        self.delivery = Delivery(self.metrics.timed(lambda rows: insert_batch(self.engine, rows)))
        # A slow database makes the thread take batches more slowly: the backlog waits in the
        # batcher, bounded by memory_max_records.
        self.batcher = Batcher(settings.batch_size, settings.flush_ms / 1000.0, settings.memory_max_records)
        self._online = False
        self._backoff = BACKOFF_MIN_S
        self._next_probe = 0.0
        self._stopping = threading.Event()
        self._deadline = float("inf")  # of the shutdown drain
        self._stopped = False
        self._lock = threading.Lock()  # the synchronous spool path after stop()
        self._thread: threading.Thread | None = None
        self._last_stats = time.monotonic()
        self._thread_cpu_s = 0.0  # CPU the writer thread used: what logging costs this process

    # ---- producer side (event loop): no I/O, no serialisation ------------------------------
    def submit(self, raw: dict[str, Any]) -> None:
        if self._stopped:
            self._late(raw)
        elif self.batcher.put(raw):
            self.counters["enqueued"] += 1
        else:
            self.outbox.drop([raw.get(DEDUPE_KEY)], "queue above PGLOG_MEMORY_MAX_RECORDS")

    def _late(self, raw: dict[str, Any]) -> None:
        """After the shutdown drain: spool synchronously (only LiteLLM's atexit flush gets here)."""
        with self._lock:
            self.counters["enqueued"] += 1
            self.outbox.keep([self._prepare(raw)])

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Check the schema (refuse to start on a mismatch; start offline if the database is
        away), then start the thread."""
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
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            emit("writer_start", logging.WARNING, online=False, reason=short(exc))
        self._thread = threading.Thread(target=self._run, name="litellm-pglog-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Drain to the database within the deadline, the rest to the spool. Idempotent."""
        if self._stopped:
            return
        timeout = self.settings.drain_timeout_s if timeout is None else timeout
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self.batcher.close()
        if self._thread is not None:
            self._thread.join(timeout + self.settings.connect_timeout_s + 5)
        with self._lock:
            self._stopped = True
            # only if the thread hung (or records came in while it finished): spool what is left
            self.outbox.keep([self._prepare(raw) for raw in self.batcher.drain()])
            # the process is about to exit: batches the full spool left in memory die with it
            for rows in self.outbox.held_in_memory():
                self.outbox.drop([r.get(DEDUPE_KEY) for r in rows], "process exiting with the spool full")
        self.write_stats()
        self.publish_metrics(force=True)
        self.metrics.process_exiting()
        emit("shutdown", counters=dict(self.counters), spool_segments=len(self.spool.segments()))

    def _prepare(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Each record is prepared once in this process, in this thread, never on the event loop."""
        try:
            row = records.prepare(raw, self.settings.max_payload_bytes, self.settings.payload_policy)
        except Exception as exc:  # a record we cannot even serialise: keep what we can
            policy = self.settings.payload_policy
            emit("prepare_error", logging.ERROR, call_id=policy.mask(str(raw.get("id"))), error=short(exc))
            row = records.prepare({k: raw.get(k) for k in ("id", "startTime", "endTime", "status")},
                                  self.settings.max_payload_bytes, policy)
        return row

    # ---- the writer thread: the only one that touches the database and the spool --------------
    def _run(self) -> None:
        if self._online:
            self._guarded(self._replay)
        while True:
            wait = min(self.settings.stats_interval_s, BACKOFF_MAX_S if self._online else self._backoff)
            batch, closed = self.batcher.next_batch(idle_s=wait)
            if closed:  # stop(): everything still queued, then the shutdown drain
                batch += self.batcher.drain()
            size = self.settings.batch_size
            for i in range(0, len(batch), size):
                rows = [self._prepare(raw) for raw in batch[i:i + size]]
                self.metrics.observe_rows(rows)  # model/status/tokens/cost: pglog_requests_total etc.
                if not self._online or (self._stopping.is_set() and time.monotonic() >= self._deadline):
                    self._guarded(self.outbox.keep, rows)
                else:
                    self._guarded(self._deliver, rows)
            if closed:
                self._guarded(self._drain)
                self._thread_cpu_s = time.thread_time()
                return
            self._thread_cpu_s = time.thread_time()
            now = time.monotonic()
            if not self._online and now >= self._next_probe and not self._stopping.is_set():
                self._guarded(self._replay)
            if now - self._last_stats >= self.settings.stats_interval_s:
                self.log_stats()
            self._guarded(self.publish_metrics)

    def _guarded(self, step: Any, rows: list[dict[str, Any]] | None = None) -> None:
        """Run one step of the writer thread; an unexpected error (a bug, a full disk in an
        odd place) must not end the thread silently: log it, keep the rows in hand in the
        outbox, go offline so the backlog is retried after the backoff."""
        try:
            step() if rows is None else step(rows)
        except Exception as exc:
            emit("writer_error", logging.ERROR, step=getattr(step, "__name__", str(step)), error=short(exc))
            if rows:
                self.outbox.keep(rows)
            self._go_offline(exc)

    def _deliver(self, rows: list[dict[str, Any]]) -> None:
        outcome = self.delivery.deliver(rows)
        self._account(outcome, "written", rows)
        if outcome.undelivered:
            self._go_offline(outcome.error)
            self.outbox.keep(outcome.undelivered)

    def _replay(self) -> bool:
        """Deliver the backlog, oldest first. True if all of it went in (the writer is online)."""
        try:
            if not self._online:
                with self.engine.connect() as conn:
                    check_revision(conn)
        except SchemaMismatch as exc:
            emit("schema_mismatch", logging.ERROR, error=str(exc), action="keeping records in the spool")
            self._online = False
            self._next_probe = time.monotonic() + BACKOFF_MAX_S
            return False
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self._go_offline(exc)
            return False
        backlog = self.outbox.backlog()
        try:
            for pending in backlog:
                outcome = self.delivery.deliver(pending.rows)
                self._account(outcome, "replayed", pending.rows)
                if outcome.undelivered:
                    pending.keep(outcome.undelivered)
                    self._go_offline(outcome.error)
                    return False
                pending.done()
        finally:
            backlog.close()  # releases the lock of a segment we stopped in
        if not self._online:
            emit("db_online", replayed=self.counters["replayed"])
        self._online = True
        self._backoff = BACKOFF_MIN_S
        return True

    def _drain(self) -> None:
        """Shutdown, after the last queued batch: if offline, one last replay within the
        deadline; then the batches held in memory go to the database or the spool."""
        if not self._online and time.monotonic() < self._deadline:
            self._replay()
        for rows in self.outbox.held_in_memory():
            if self._online and time.monotonic() < self._deadline:
                self._deliver(rows)
            else:
                self.outbox.keep(rows)

    def _account(self, outcome: Outcome, source: str, rows: list[dict[str, Any]]) -> None:
        """Counters and log lines of one delivery; rejected rows to the rejected file."""
        self.counters[source] += outcome.written
        self._observe_committed(outcome, rows)
        if outcome.duplicates:
            self.counters["duplicates"] += len(outcome.duplicates)
            for key in outcome.duplicates[:_LOGGED_KEYS]:
                emit("duplicate", logging.WARNING, event_id=key, source=source,
                     action="kept the first row, ignored this delivery")
            if len(outcome.duplicates) > _LOGGED_KEYS:
                emit("duplicate", logging.WARNING, more=len(outcome.duplicates) - _LOGGED_KEYS, source=source)
        if outcome.rejected:
            kept = self.outbox.reject(outcome.rejected)  # kept first, counted after: no count runs ahead
            kept_in = os.path.join(self.spool.directory, f"rejected-{os.getpid()}.jsonl")
            for row, error in outcome.rejected:
                emit("rejected", logging.ERROR, event_id=row.get(DEDUPE_KEY), call_id=row.get("call_id"), error=error, kept_in=kept_in)
            self.counters["failed"] += kept

    def _observe_committed(self, outcome: Outcome, rows: list[dict[str, Any]]) -> None:
        """Response-to-row delay of the rows this delivery committed (not the duplicates, the
        refused or the undelivered ones)."""
        if not outcome.written:
            return
        skip = {id(r) for r in outcome.undelivered} | {id(r) for r, _ in outcome.rejected}
        dups = set(outcome.duplicates)
        self.metrics.observe_committed([r for r in rows if id(r) not in skip and r.get(DEDUPE_KEY) not in dups])

    def _go_offline(self, exc: BaseException | None) -> None:
        if self._online:
            emit("db_offline", logging.ERROR, error=short(exc) if exc else "", action="spooling to disk")
        self._online = False
        self._next_probe = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    # ---- statistics ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "time": time.time(),
            "online": self._online,
            "counters": dict(self.counters),
            "pool": self.pool_stats.snapshot(self.engine),
            "queue_depth": self.batcher.depth(),
            "memory_records": self.outbox.memory_records,
            "spool_segments": len(self.spool.segments()),
            "writer_thread_cpu_s": round(self._thread_cpu_s, 3),
        }

    def log_stats(self) -> None:
        self._last_stats = time.monotonic()
        snap = self.snapshot()
        emit("pool_stats", **snap)
        self.write_stats(snap)

    def publish_metrics(self, force: bool = False) -> None:
        self.metrics.publish(self.counters, self._gauges, force=force)

    def _gauges(self) -> dict[str, float]:
        pool = self.engine.pool
        values = {
            "queue_depth": self.batcher.depth(),
            "memory_records": self.outbox.memory_records,
            "spool_segments": len(self.spool.segments()),
            "spool_bytes": self.spool.size_bytes(),
            "writer_online": 1 if self._online else 0,
        }
        for name, attr in (("pool_checked_out", "checkedout"), ("pool_size", "size")):
            fn = getattr(pool, attr, None)
            if callable(fn):
                values[name] = fn()
        return values

    def write_stats(self, snap: dict[str, Any] | None = None) -> None:
        write_stats_file(self.settings.state_dir, snap or self.snapshot())
