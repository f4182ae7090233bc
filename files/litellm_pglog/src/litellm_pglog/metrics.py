"""Prometheus metrics of the logging pipeline (prometheus_client), kept by the writer thread.

Nothing here runs on the event loop. The callback still only counts `enqueued` in a plain dict
(stats.py); the writer thread, once per turn of its loop, adds what the dict counters moved by
since the last turn to the Prometheus counters (publish()), refreshes the gauges (at most once
a second: the spool's size is a directory listing), and counts each record's model, status,
tokens and cost when it has prepared a batch of rows (observe_rows()). Insert time and
response-to-row delay are observed by the writer thread around each delivery.

Several uvicorn workers (litellm --num_workers N): prometheus_client's multiprocess mode. The
unit sets PROMETHEUS_MULTIPROC_DIR (a runtime directory emptied at every start); every worker
writes its series into its own files there, and ONE endpoint adds them up: each worker tries
to bind PGLOG_METRICS_HOST:PGLOG_METRICS_PORT, the first one wins, the others retry every few
seconds (so a worker that dies hands the port over). Gauges are summed (queue, pool), or the
max (spool: one directory shared by all workers) or the min (writer online: 0 if any worker's
writer is offline) over the live workers. Without PROMETHEUS_MULTIPROC_DIR (tests, one
process) the metrics live in a registry of their own.

Names: pglog_records_<counter>_total for each counter of stats.py (`failed` is exported as
pglog_records_rejected_total: the rows PostgreSQL refused), pglog_requests_total{model,status},
pglog_upstream_errors_total{model}, pglog_tokens_total{model,kind}, pglog_cost_usd_total{model},
pglog_queue_depth, pglog_memory_records, pglog_spool_segments, pglog_spool_bytes,
pglog_writer_online, pglog_pool_checked_out, pglog_pool_size, pglog_batch_insert_seconds,
pglog_response_to_row_seconds. The alert rules (roles/monitoring) use these names.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .events import emit
from .stats import COUNTERS

EXPORTED_NAME = {"failed": "rejected"}  # counters whose metric name says more than the dict key
GAUGE_REFRESH_S = 1.0
RETRY_BIND_S = 5.0
_INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_DELAY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The metric objects of one process. multiprocess=None: decided by PROMETHEUS_MULTIPROC_DIR."""

    def __init__(self, multiprocess: bool | None = None) -> None:
        self.multiprocess = bool(multiprocess_dir()) if multiprocess is None else multiprocess
        # Multiprocess: values go to the worker's files, no registry holds the objects; the
        # endpoint's registry reads the files. Otherwise: a registry of our own.
        self.registry = CollectorRegistry()
        reg = None if self.multiprocess else self.registry
        self.records = {
            key: Counter(f"pglog_records_{EXPORTED_NAME.get(key, key)}", f"Log records: {key} (stats.py)", registry=reg)
            for key in COUNTERS
        }
        self.requests = Counter("pglog_requests", "Calls logged, by model and status", ["model", "status"], registry=reg)
        self.upstream_errors = Counter("pglog_upstream_errors", "Calls logged with status failure, by model", ["model"], registry=reg)
        self.tokens = Counter("pglog_tokens", "Tokens of the calls logged", ["model", "kind"], registry=reg)
        self.cost = Counter("pglog_cost_usd", "Cost of the calls logged (USD, as LiteLLM computed it)", ["model"], registry=reg)

        def gauge(name: str, doc: str, mode: str) -> Gauge:
            return Gauge(name, doc, registry=reg, multiprocess_mode=mode)

        self.queue_depth = gauge("pglog_queue_depth", "Records waiting for the writer thread", "livesum")
        self.memory_records = gauge("pglog_memory_records", "Records held in memory (spool full)", "livesum")
        self.spool_segments = gauge("pglog_spool_segments", "Spool segments waiting for replay", "livemax")
        self.spool_bytes = gauge("pglog_spool_bytes", "Bytes in the spool directory", "livemax")
        self.writer_online = gauge("pglog_writer_online", "1 if the writer delivers to PostgreSQL (min over workers)", "livemin")
        self.pool_checked_out = gauge("pglog_pool_checked_out", "Database connections in use", "livesum")
        self.pool_size = gauge("pglog_pool_size", "Database connection pool size", "livesum")
        self.insert_seconds = Histogram("pglog_batch_insert_seconds", "Time of one batch insert (one statement)",
                                        buckets=_INSERT_BUCKETS, registry=reg)
        self.delay_seconds = Histogram("pglog_response_to_row_seconds", "From the end of the response to its row committed",
                                       buckets=_DELAY_BUCKETS, registry=reg)
        self._published = dict.fromkeys(COUNTERS, 0)
        self._next_gauges = 0.0

    # ---- writer thread -------------------------------------------------------------------------
    def publish(self, counters: dict[str, int], gauges: Callable[[], dict[str, float]], force: bool = False) -> None:
        """Counters: add what moved since the last call. Gauges: at most once a second."""
        for key in COUNTERS:
            now = counters.get(key, 0)
            moved = now - self._published[key]
            if moved > 0:
                self.records[key].inc(moved)
                self._published[key] = now
        t = time.monotonic()
        if force or t >= self._next_gauges:
            self._next_gauges = t + GAUGE_REFRESH_S
            values = gauges()
            for name in ("queue_depth", "memory_records", "spool_segments", "spool_bytes",
                         "writer_online", "pool_checked_out", "pool_size"):
                if name in values:
                    getattr(self, name).set(values[name])

    def observe_row(self, row: dict[str, Any]) -> None:
        self.observe_rows([row])

    def observe_rows(self, rows: list[dict[str, Any]]) -> None:
        """Count a batch of prepared rows. Summed per label set first: a labels() lookup costs
        about 3 us (lock, tuple, dict), four per row were a tenth of the writer thread's time."""
        calls: dict[tuple[str, str], int] = {}
        tokens: dict[tuple[str, str], int] = {}
        cost: dict[str, float] = {}
        for row in rows:
            model = row.get("model") or ""
            key = (model, row.get("status") or "")
            calls[key] = calls.get(key, 0) + 1
            for kind in ("prompt", "completion"):
                n = row.get(f"{kind}_tokens") or 0
                if n > 0:
                    tokens[(model, kind)] = tokens.get((model, kind), 0) + n
            c = row.get("cost_usd") or 0.0
            if c > 0:
                cost[model] = cost.get(model, 0.0) + c
        for (model, status), n in calls.items():
            self.requests.labels(model, status).inc(n)
            if status == "failure":
                self.upstream_errors.labels(model).inc(n)
        for labels, n in tokens.items():
            self.tokens.labels(*labels).inc(n)
        for model, c in cost.items():
            self.cost.labels(model).inc(c)

    def observe_committed(self, rows: list[dict[str, Any]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for row in rows:
            ended = row.get("ended_at")
            if isinstance(ended, (int, float)):
                self.delay_seconds.observe(max(0.0, now - ended))

    def timed(self, insert: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def run(rows: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return insert(rows)
            finally:
                self.insert_seconds.observe(time.perf_counter() - t0)
        return run

    def process_exiting(self) -> None:
        """Multiprocess: this worker's live gauges no longer count."""
        if self.multiprocess:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())

    # ---- the endpoint ----------------------------------------------------------------------------
    def serving_registry(self) -> CollectorRegistry:
        if not self.multiprocess:
            return self.registry
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry


class Endpoint:
    """GET /metrics on host:port, apart from LiteLLM's routes. The first worker to bind serves
    everyone's series (multiprocess); the others keep trying in a daemon thread."""

    def __init__(self, metrics: Metrics, host: str, port: int, retry_s: float = RETRY_BIND_S) -> None:
        self.metrics, self.host, self.port, self.retry_s = metrics, host, port, retry_s
        self.server: Any = None
        self._stop = threading.Event()

    def start(self) -> None:
        if not self._try_bind():
            threading.Thread(target=self._retry, name="litellm-pglog-metrics-bind", daemon=True).start()

    def _try_bind(self) -> bool:
        try:
            self.server, _ = start_http_server(self.port, addr=self.host, registry=self.metrics.serving_registry())
        except OSError:
            return False
        emit("metrics_endpoint", host=self.host, port=self.port, pid=os.getpid())
        return True

    def _retry(self) -> None:
        emit("metrics_endpoint_waiting", logging.INFO, host=self.host, port=self.port,
             reason="another worker serves it")
        while not self._stop.wait(self.retry_s):
            if self._try_bind():
                return

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
