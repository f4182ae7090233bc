"""The usage report with and without JIT, interleaved in one run (issue 14: report p95 <= 200 ms).

PostgreSQL estimates the report's unnested histogram buckets far above jit_above_cost and compiles
the query with LLVM on every run; report.usage() now runs it with `SET LOCAL jit = off`. This
bench fills N request/response pairs over 30 days (default 500,000; the same SQL fill as
bench/reports_at_scale.py), refreshes the rollup, captures the report's own query for each
grouping and window, then runs it alternately with jit on and off (same rows compared), and
prints p50/p95 of each, their ratio, and the JIT time EXPLAIN ANALYZE reports for the widest one.

Usage: .venv-dev/bin/python bench/report_jit_ab.py [pairs] [runs]. Run it alone (load average in
the output)."""

import json
import sys
import time

import sqlalchemy
from _rig import load_avg, migrated_cluster, percentile
from pgcluster import OWNER, OWNER_PW  # noqa: E402  (_rig put tests/ on the path)
from reports_at_scale import fill
from litellm_pglog import report
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from sqlalchemy import text

CASES = (("user", "30d"), ("key", "30d"), ("day", "30d"), ("user", "7d"))


def fill_and_roll_up(engine, n):
    fill(engine, n)
    with engine.connect() as conn:
        report.refresh(conn, lag_s=0)
        conn.commit()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE usage_hourly, usage_daily_rollup"))


def report_sql(engine, by, since):
    """The report's main statement and its parameters, as report.usage() sends them."""
    captured = []

    def keep(conn, cursor, statement, parameters, context, executemany):
        captured.append((statement, parameters))

    sqlalchemy.event.listen(engine, "before_cursor_execute", keep)
    try:
        with engine.connect() as conn:
            report.usage(conn, report.parse_since(since), by)
    finally:
        sqlalchemy.event.remove(engine, "before_cursor_execute", keep)
    return captured[-1]


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 500_000, runs=int(sys.argv[2]) if len(sys.argv) > 2 else 15):
    cluster = migrated_cluster()
    try:
        engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
        sqlalchemy.event.listen(engine, "connect", lambda dbapi, _: dbapi.cursor().execute("SET statement_timeout = 0"))
        fill_and_roll_up(engine, n)
        out = {"bench": "report_jit_ab", "pairs": n, "runs_each": runs, "load_avg_start": load_avg(), "cases": {}}
        with engine.connect() as conn:
            out["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
            out["jit_available"] = conn.execute(text("SELECT pg_jit_available()")).scalar()
            for by, since in CASES:
                stmt, params = report_sql(engine, by, since)
                times, rows = {"on": [], "off": []}, {}
                for _ in range(runs):
                    for jit in ("on", "off"):  # interleaved: the machine's drift hits both alike
                        conn.execute(text(f"SET jit = {jit}"))
                        t = time.perf_counter()
                        rows[jit] = conn.exec_driver_sql(stmt, params).fetchall()
                        times[jit].append((time.perf_counter() - t) * 1000)
                case = {f"jit_{k}": {"p50_ms": round(percentile(v, 50), 1), "p95_ms": round(percentile(v, 95), 1)}
                        for k, v in times.items()}
                case["p50_off_to_on"] = round(percentile(times["off"], 50) / percentile(times["on"], 50), 2)
                case["same_rows"] = rows["on"] == rows["off"]
                case["groups"] = len(rows["off"])
                if (by, since) == CASES[0]:
                    conn.execute(text("SET jit = on"))
                    plan = [r[0] for r in conn.exec_driver_sql("EXPLAIN (ANALYZE) " + stmt, params)]
                    case["explain_analyze_jit_on_tail"] = plan[-6:]
                out["cases"][f"{by} --since {since}"] = case
            conn.rollback()
        out["load_avg_end"] = load_avg()
        engine.dispose()
        print(json.dumps(out, default=str))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
