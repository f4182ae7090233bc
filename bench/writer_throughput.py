"""Writer throughput vs a raw COPY of the same rows, same run, same database.

writer: N raw records submitted at once -> all committed (includes prepare/serialisation in the
writer thread, execute_values, RETURNING, one transaction per PGLOG_BATCH_SIZE batch).
copy:   the same N records turned into rows (records.prepare: the JSON serialisation any loader
        needs) and CSV, COPY'd straight into requests and responses in one transaction, all timed.
copy_preserialized: the same COPY with serialisation done before the clock starts (database
        load only), reported for transparency.
Target: writer / copy >= 0.6 (rows/s). Prints JSON."""

import csv
import io
import json
import shutil
import os
import sys
import tempfile
import time

from _rig import migrated_cluster

from helpers import make_slo  # noqa: E402
from litellm_pglog import records
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from litellm_pglog.writer import Writer
from pgcluster import DB


def truncate(cluster):
    with cluster.admin(DB) as conn:
        conn.cursor().execute("TRUNCATE requests, responses RESTART IDENTITY")


def run_writer(settings, slos):
    writer = Writer(settings)
    writer.start()
    raw = [records.capture(s) for s in slos]
    t0 = time.perf_counter()
    for r in raw:
        writer.submit(r)
    while writer.counters["written"] < len(raw):
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    writer.stop(timeout=10)
    return elapsed


def run_copy_direct(settings, slos, serialise_in_clock=True):
    """COPY straight into the tables: the fastest possible load of these rows."""
    import datetime as dt

    engine = make_engine(settings, log_connect=False)
    conn = engine.raw_connection()
    try:
        t0 = time.perf_counter()
        rows = [records.prepare(records.capture(s), settings.max_payload_bytes) for s in slos]
        if not serialise_in_clock:
            t0 = time.perf_counter()
        req, resp = io.StringIO(), io.StringIO()
        wq, wr = csv.writer(req), csv.writer(resp)
        utc = dt.timezone.utc
        for i, r in enumerate(rows, 1):
            wq.writerow([i, r["call_id"], dt.datetime.fromtimestamp(r["created_at"], utc).isoformat(), r["model"],
                         r["call_type"], r["stream"], r["api_key_hash"], r["end_user"] or "", r["tags"], r["payload"]])
            wr.writerow([i, i, dt.datetime.fromtimestamp(r["ended_at"], utc).isoformat(), r["status"],
                         r["prompt_tokens"], r["completion_tokens"], r["total_tokens"], r["cost_usd"],
                         r["latency_ms"], r["body"]])
        req.seek(0)
        resp.seek(0)
        cur = conn.cursor()
        cur.copy_expert("COPY requests (id, call_id, created_at, model, call_type, stream, api_key_hash, end_user,"
                        " tags, payload) FROM STDIN WITH (FORMAT csv)", req)
        cur.copy_expert("COPY responses (id, request_id, created_at, status, prompt_tokens, completion_tokens,"
                        " total_tokens, cost_usd, latency_ms, body) FROM STDIN WITH (FORMAT csv)", resp)
        conn.commit()
        return time.perf_counter() - t0
    finally:
        conn.close()
        engine.dispose()


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 20000):
    cluster = migrated_cluster()
    tmp = tempfile.mkdtemp(prefix="pglog-bench-")
    try:
        env = {**cluster.env(), "PGLOG_SPOOL_DIR": os.path.join(tmp, "spool"), "PGLOG_STATE_DIR": tmp}
        settings = Settings.from_env(env)
        results = {"writer": [], "copy": [], "copy_preserialized": []}
        for _ in range(5):  # interleaved, best of 5 each
            slos = [make_slo(i, content="benchmark message " * 20) for i in range(n)]
            truncate(cluster)
            results["writer"].append(run_writer(settings, slos))
            truncate(cluster)
            results["copy"].append(run_copy_direct(settings, slos))
            truncate(cluster)
            results["copy_preserialized"].append(run_copy_direct(settings, slos, serialise_in_clock=False))
        w, c, cp = min(results["writer"]), min(results["copy"]), min(results["copy_preserialized"])
        print(json.dumps({
            "bench": "writer_throughput", "rows": n, "batch_size": settings.batch_size,
            "writer_rows_per_s": round(n / w), "copy_rows_per_s": round(n / c),
            "ratio": round(c / w, 3), "target_ratio": 0.6,
            "copy_preserialized_rows_per_s": round(n / cp), "ratio_vs_preserialized": round(cp / w, 3),
            "runs_s": {k: [round(x, 3) for x in v] for k, v in results.items()},
        }))
    finally:
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
