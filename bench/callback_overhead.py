"""Time spent on the event loop per logging event: PglogCallback.async_log_success_event with a
live writer thread behind it (real PostgreSQL), N events. Target: p50 <= 50 us. Prints JSON."""

import asyncio
import json
import shutil
import os
import sys
import tempfile
import time

from _rig import load_avg, migrated_cluster, percentile

from helpers import make_slo  # noqa: E402  (tests/)
from litellm_pglog.callback import PglogCallback
from litellm_pglog.config import Settings
from litellm_pglog.writer import Writer


async def measure(cb, events):
    times = []
    for kw in events:
        t0 = time.perf_counter_ns()
        await cb.async_log_success_event(kw, None, None, None)
        times.append((time.perf_counter_ns() - t0) / 1000.0)
        if len(times) % 200 == 0:
            await asyncio.sleep(0)  # let the loop breathe, like a proxy would
    return times


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 20000):
    cluster = migrated_cluster()
    tmp = tempfile.mkdtemp(prefix="pglog-bench-")
    try:
        env = {**cluster.env(), "PGLOG_SPOOL_DIR": os.path.join(tmp, "spool"), "PGLOG_STATE_DIR": tmp}
        writer = Writer(Settings.from_env(env))
        writer.start()
        cb = PglogCallback(writer=writer)
        events = [{"standard_logging_object": make_slo(i, content="benchmark message " * 20)} for i in range(n)]
        load0 = load_avg()
        times = asyncio.run(measure(cb, events))
        t0 = time.monotonic()
        while writer.counters["written"] < n and time.monotonic() - t0 < 120:
            time.sleep(0.05)
        writer.stop(timeout=30)
        print(json.dumps({
            "bench": "callback_overhead", "events": n, "load_avg_start": load0, "load_avg_end": load_avg(),
            "p50_us": round(percentile(times, 50), 2), "p99_us": round(percentile(times, 99), 2),
            "mean_us": round(sum(times) / n, 2), "max_us": round(max(times), 1),
            "target_p50_us": 50, "written": writer.counters["written"], "dropped": writer.counters["dropped"],
        }))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
