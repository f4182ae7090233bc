"""Time spent on the event loop per logging event: PglogCallback.async_log_success_event with a
live writer thread behind it (real PostgreSQL), N events per round. Target: p50 <= 50 us.

A/B in one run (issue 12): the writer with its Prometheus metrics (as deployed) and with a
metrics object that does nothing, alternated over ROUNDS rounds each on the same cluster. The
metrics are updated in the writer thread only; what this measures is whether that work,
competing for the GIL, shows on the event loop. Prints one JSON document with both.

    .venv-dev/bin/python bench/callback_overhead.py [N=20000] [ROUNDS=2]
"""

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

from _rig import load_avg, migrated_cluster, percentile

from helpers import make_slo  # noqa: E402  (tests/)
from litellm_pglog.callback import PglogCallback
from litellm_pglog.config import Settings
from litellm_pglog.metrics import Metrics
from litellm_pglog.writer import Writer


class NoMetrics(Metrics):
    """The B side: the writer's metric calls cost nothing (the registry is never filled)."""

    def __init__(self) -> None:
        super().__init__(multiprocess=False)

    def publish(self, counters, gauges, force=False):
        pass

    def observe_row(self, row):
        pass

    def observe_committed(self, rows, now=None):
        pass

    def timed(self, insert):
        return insert


async def measure(cb, events):
    times = []
    for kw in events:
        t0 = time.perf_counter_ns()
        await cb.async_log_success_event(kw, None, None, None)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
        if len(times) % 200 == 0:
            await asyncio.sleep(0)  # let the loop breathe, like a proxy would
    return times


def one_round(cluster, tmp, n, metrics, offset):
    env = {**cluster.env(), "PGLOG_SPOOL_DIR": os.path.join(tmp, f"spool-{offset}"), "PGLOG_STATE_DIR": tmp}
    writer = Writer(Settings.from_env(env), metrics=metrics)
    writer.start()
    try:
        cb = PglogCallback(writer=writer)
        events = [{"standard_logging_object": make_slo(offset + i, content="benchmark message " * 20)}
                  for i in range(n)]
        times = asyncio.run(measure(cb, events))
        t0 = time.monotonic()
        while writer.counters["written"] < n and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        return {"p50_us": round(percentile(times, 50), 2), "p99_us": round(percentile(times, 99), 2),
                "mean_us": round(sum(times) / n, 2), "max_us": round(max(times), 1),
                "written": writer.counters["written"], "dropped": writer.counters["dropped"]}
    finally:
        writer.stop(timeout=30)


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 20000, rounds=int(sys.argv[2]) if len(sys.argv) > 2 else 2):
    cluster = migrated_cluster()
    tmp = tempfile.mkdtemp(prefix="pglog-bench-")
    try:
        load0 = load_avg()
        runs = {"with_metrics": [], "without_metrics": []}
        offset = 0
        for _ in range(rounds):
            for side in ("without_metrics", "with_metrics"):
                metrics = Metrics(multiprocess=False) if side == "with_metrics" else NoMetrics()
                runs[side].append(one_round(cluster, tmp, n, metrics, offset))
                offset += n
        summary = {side: {"p50_us": statistics.median(r["p50_us"] for r in rs),
                          "p99_us": statistics.median(r["p99_us"] for r in rs),
                          "written": sum(r["written"] for r in rs), "dropped": sum(r["dropped"] for r in rs)}
                   for side, rs in runs.items()}
        print(json.dumps({
            "bench": "callback_overhead", "events_per_round": n, "rounds": rounds,
            "load_avg_start": load0, "load_avg_end": load_avg(), "target_p50_us": 50,
            **summary,
            "p50_ratio_with_to_without": round(summary["with_metrics"]["p50_us"]
                                               / summary["without_metrics"]["p50_us"], 3),
            "rounds_detail": runs,
        }))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
