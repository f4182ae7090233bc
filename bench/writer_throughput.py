"""Writer throughput vs a raw COPY of the same rows, same run, same database.

writer: N raw records submitted at once -> all committed (includes prepare/serialisation in the
writer thread and one statement -- both tables, ON CONFLICT -- per PGLOG_BATCH_SIZE batch).
copy:   the same N records turned into rows (records.prepare: the JSON serialisation any loader
        needs) and CSV, COPY'd straight into requests and responses in one transaction, all timed.
copy_preserialized: the same COPY with serialisation done before the clock starts (database
        load only), reported for transparency.
writer_statement: the writer with the COPY path switched off (every batch through insert.py's
        one statement): the A/B of the COPY path (copyload.py), interleaved in the same rounds.
Target: writer / copy >= 0.8 (rows/s, best of 5 interleaved runs). Prints JSON.

Wall time needs a quiet machine. Also printed, because it holds up on a busy one: the CPU
seconds each way costs, this process (all threads: the writer's, or COPY's serialisation)
and the PostgreSQL cluster (all backends), and their ratio `cpu_ratio` = copy CPU / writer CPU."""

import csv
import io
import json
import shutil
import os
import sys
import tempfile
import time

from _rig import cluster_cpu_s, load_avg, migrated_cluster

from helpers import make_slo  # noqa: E402
from litellm_pglog import copyload, records
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from litellm_pglog.writer import Writer
from pgcluster import DB


def truncate(cluster):
    with cluster.admin(DB) as conn:
        conn.cursor().execute("TRUNCATE requests, responses RESTART IDENTITY")


class Clock:
    """Wall time, this process's CPU and the cluster's CPU between start() and stop()."""

    def __init__(self, cluster):
        self.cluster = cluster

    def start(self):
        self.t0, self.p0, self.s0 = time.perf_counter(), time.process_time(), cluster_cpu_s(self.cluster)

    def stop(self):
        return {"wall": time.perf_counter() - self.t0, "python_cpu": time.process_time() - self.p0,
                "server_cpu": cluster_cpu_s(self.cluster) - self.s0}


def run_writer(settings, slos, clock, copy_min_rows=copyload.MIN_ROWS):
    shipped, copyload.MIN_ROWS = copyload.MIN_ROWS, copy_min_rows
    try:
        return _run_writer(settings, slos, clock)
    finally:
        copyload.MIN_ROWS = shipped


def _run_writer(settings, slos, clock):
    writer = Writer(settings)
    writer.start()
    raw = [records.capture(s) for s in slos]
    clock.start()
    for r in raw:
        writer.submit(r)
    while writer.counters["written"] < len(raw):
        time.sleep(0.002)
    elapsed = clock.stop()
    writer.stop(timeout=10)
    return elapsed


def run_copy_direct(settings, slos, clock, serialise_in_clock=True):
    """COPY straight into the tables: the fastest possible load of these rows."""
    import datetime as dt

    engine = make_engine(settings, log_connect=False)
    conn = engine.raw_connection()
    try:
        clock.start()
        rows = [records.prepare(records.capture(s), settings.max_payload_bytes) for s in slos]
        if not serialise_in_clock:
            clock.start()
        req, resp = io.StringIO(), io.StringIO()
        wq, wr = csv.writer(req), csv.writer(resp)
        utc = dt.timezone.utc
        for i, r in enumerate(rows, 1):
            created = dt.datetime.fromtimestamp(r["created_at"], utc).isoformat()
            wq.writerow([i, r["call_id"], created, r["model"], r["call_type"], r["stream"], r["api_key_hash"],
                         r["end_user"] or "", r["tags"], r["payload"], r["event_id"]])
            wr.writerow([i, i, created, dt.datetime.fromtimestamp(r["ended_at"], utc).isoformat(), r["status"],
                         r["prompt_tokens"], r["completion_tokens"], r["total_tokens"], r["cost_usd"],
                         r["latency_ms"], r["body"]])
        req.seek(0)
        resp.seek(0)
        cur = conn.cursor()
        cur.copy_expert("COPY requests (id, call_id, created_at, model, call_type, stream, api_key_hash, end_user,"
                        " tags, payload, event_id) FROM STDIN WITH (FORMAT csv)", req)
        cur.copy_expert("COPY responses (id, request_id, request_created_at, created_at, status, prompt_tokens,"
                        " completion_tokens,"
                        " total_tokens, cost_usd, latency_ms, body) FROM STDIN WITH (FORMAT csv)", resp)
        conn.commit()
        return clock.stop()
    finally:
        conn.close()
        engine.dispose()


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 20000):
    cluster = migrated_cluster()
    tmp = tempfile.mkdtemp(prefix="pglog-bench-")
    try:
        env = {**cluster.env(), "PGLOG_SPOOL_DIR": os.path.join(tmp, "spool"), "PGLOG_STATE_DIR": tmp}
        settings = Settings.from_env(env)
        clock = Clock(cluster)
        load0 = load_avg()
        results = {"writer": [], "writer_statement": [], "copy": [], "copy_preserialized": []}
        for _ in range(5):  # interleaved, best of 5 each
            slos = [make_slo(i, content="benchmark message " * 20) for i in range(n)]
            truncate(cluster)
            results["writer"].append(run_writer(settings, slos, clock))
            truncate(cluster)
            results["writer_statement"].append(run_writer(settings, slos, clock, copy_min_rows=10**9))
            truncate(cluster)
            results["copy"].append(run_copy_direct(settings, slos, clock))
            truncate(cluster)
            results["copy_preserialized"].append(run_copy_direct(settings, slos, clock, serialise_in_clock=False))

        def best(name, what):
            return min(r[what] for r in results[name])

        def cpu(name):
            return min(r["python_cpu"] + r["server_cpu"] for r in results[name])

        w, c, cp = best("writer", "wall"), best("copy", "wall"), best("copy_preserialized", "wall")
        ws = best("writer_statement", "wall")
        print(json.dumps({
            "bench": "writer_throughput", "rows": n, "batch_size": settings.batch_size,
            "load_avg_start": load0, "load_avg_end": load_avg(),
            "writer_rows_per_s": round(n / w), "copy_rows_per_s": round(n / c),
            "ratio": round(c / w, 3), "target_ratio": 0.8, "copy_min_rows": copyload.MIN_ROWS,
            "writer_statement_rows_per_s": round(n / ws), "ratio_statement_path": round(c / ws, 3),
            "copy_preserialized_rows_per_s": round(n / cp), "ratio_vs_preserialized": round(cp / w, 3),
            "cpu_ratio": round(cpu("copy") / cpu("writer"), 3),
            "cpu_us_per_row": {k: {"python": round(best(k, "python_cpu") / n * 1e6, 1),
                                   "server": round(best(k, "server_cpu") / n * 1e6, 1)} for k in results},
            "runs_s": {k: [round(x["wall"], 3) for x in v] for k, v in results.items()},
        }))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
