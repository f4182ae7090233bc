"""What the writer's threads cost a busy event loop, in one process, A/B interleaved.

The proxy's event loop is CPU-bound at saturation; every time a writer thread wakes up it must
take the GIL from that loop, and the loop then waits to get it back (up to the 5 ms switch
interval, plus the OS's delay in rescheduling it when the cores are busy). bench/proxy_ab.py
shows the effect end to end but needs a quiet machine; this bench isolates it:

  an asyncio loop serves simulated requests (CPU slices in Python with awaits in between, then
  an upstream wait), C of them concurrently; each finished request is logged through
  PglogCallback.async_log_success_event. Phases of PHASE_S seconds alternate between
    A: the real callback -> writer threads -> PostgreSQL (the cluster of the tests)
    B: a callback that does nothing (the writer threads exist but get no records)
  so both see the same load from the rest of the machine. Prints JSON: request latency p50
  in A and B and the difference, records/s, and the writer threads' CPU time and context
  switches per record (from /proc; these depend on the code, not on the machine's load).

Usage: event_loop_stall.py [seconds=40] [concurrency=2] [cpu_ms_per_request=5]
"""

import asyncio
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from _rig import load_avg, migrated_cluster, percentile

from helpers import make_slo  # noqa: E402  (tests/)
from litellm.integrations.custom_logger import CustomLogger
from litellm_pglog.callback import PglogCallback
from litellm_pglog.config import Settings
from litellm_pglog.writer import Writer

PHASE_S = 2.0
SETTLE_S = 0.3  # the start of each phase is not measured: a batch of the previous A may be in flight


class Null(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
        return None


def burn(ms: float) -> None:
    """Pure-Python work holding the GIL, like request handling in the proxy."""
    end = time.perf_counter() + ms / 1000.0
    x = 0
    while time.perf_counter() < end:
        for i in range(200):
            x += i * i


def thread_usage(native_ids):
    """CPU seconds and context switches of the given threads of this process."""
    cpu, switches = 0.0, 0
    tick = os.sysconf("SC_CLK_TCK")
    for tid in native_ids:
        with open(f"/proc/self/task/{tid}/stat") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
        cpu += (int(f[11]) + int(f[12])) / tick
        with open(f"/proc/self/task/{tid}/status") as fh:
            for line in fh:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    switches += int(line.split()[1])
    return cpu, switches


async def serve(duration, concurrency, cpu_ms, logger_a, logger_b, events):
    lat = {"a": [], "b": []}
    logged = {"a": 0}
    t_start = time.monotonic()

    def phase(now):
        k = int((now - t_start) / PHASE_S)
        settled = (now - t_start) - k * PHASE_S >= SETTLE_S
        return ("a" if k % 2 == 0 else "b"), settled

    async def worker(w):
        i = w
        while time.monotonic() - t_start < duration:
            t0 = time.monotonic()
            name, settled = phase(t0)
            for _ in range(10):  # request handling in slices, as the proxy's awaits split it
                burn(cpu_ms / 10)
                await asyncio.sleep(0)
            await asyncio.sleep(0.01)  # the upstream call
            cb = logger_a if name == "a" else logger_b
            await cb.async_log_success_event(events[i % len(events)], None, None, None)
            if name == "a":
                logged["a"] += 1
            end_name, _ = phase(time.monotonic())
            if settled and end_name == name:
                lat[name].append((time.monotonic() - t0) * 1000)
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return lat, logged["a"]


def main(duration=float(sys.argv[1]) if len(sys.argv) > 1 else 40.0,
         concurrency=int(sys.argv[2]) if len(sys.argv) > 2 else 2,
         cpu_ms=float(sys.argv[3]) if len(sys.argv) > 3 else 5.0):
    cluster = migrated_cluster()
    tmp = tempfile.mkdtemp(prefix="pglog-stall-")
    try:
        env = {**cluster.env(), "PGLOG_SPOOL_DIR": os.path.join(tmp, "spool"), "PGLOG_STATE_DIR": tmp}
        writer = Writer(Settings.from_env(env))
        writer.start()
        time.sleep(0.5)
        ids = [t.native_id for t in threading.enumerate() if t.name.startswith("litellm-pglog")]
        events = [{"standard_logging_object": make_slo(i, content="benchmark message " * 20)} for i in range(5000)]
        load0 = load_avg()
        cpu0, sw0 = thread_usage(ids)
        lat, logged = asyncio.run(serve(duration, concurrency, cpu_ms, PglogCallback(writer=writer), Null(), events))
        deadline = time.monotonic() + 10
        while writer.counters["written"] + writer.counters["duplicates"] < logged and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu1, sw1 = thread_usage(ids)
        writer.stop(timeout=10)
        pa, pb = percentile(lat["a"], 50), percentile(lat["b"], 50)
        print(json.dumps({
            "bench": "event_loop_stall", "seconds": duration, "concurrency": concurrency,
            "cpu_ms_per_request": cpu_ms, "load_avg_start": load0, "load_avg_end": load_avg(),
            "requests": {"a": len(lat["a"]), "b": len(lat["b"])},
            "records_per_s": round(logged / (duration / 2), 1),
            "with_writer_p50_ms": round(pa, 3), "without_writer_p50_ms": round(pb, 3),
            "p50_diff_ms": round(pa - pb, 3), "p50_diff_pct": round(100 * (pa - pb) / pb, 2),
            "with_writer_p90_ms": round(percentile(lat["a"], 90), 3),
            "without_writer_p90_ms": round(percentile(lat["b"], 90), 3),
            "writer_threads_cpu_us_per_record": round((cpu1 - cpu0) / max(logged, 1) * 1e6, 1),
            "writer_threads_switches_per_record": round((sw1 - sw0) / max(logged, 1), 2),
            "written": writer.counters["written"], "dropped": writer.counters["dropped"],
        }))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
