"""Reports, lookups and retention on the partitioned log tables at scale (issue 14 acceptance).

Builds N request/response pairs (default 5,000,000) over 30 days in SQL, not through the proxy:
a realistic mix (4 models, 50 key hashes, 500 end users, 5 % failures, 20 % streams with a
first-token time, ~1 KB payloads). The oldest day holds 1,000,000 pairs (the retention figure is
for a day that size), the other 29 days share the rest. Day partitions are made as pg_partman
makes them (<table>_pYYYYMMDD) and tied to their twins by pglog_partition_link().

Then prints, as JSON:
- the first (full) rollup refresh, and an incremental one after 10,000 new pairs;
- p50/p95 of `litellm-pglog report` queries (report.usage: --since 7d and 30d, --by key, model,
  user, day), and of the call-id lookup (request + response of one call id, random ids);
- the time to drop the oldest day (1M pairs: responses day, then the requests day, detached and
  dropped as pg_partman's retention does);
- table and index sizes per million pairs;
- EXPLAIN of each report query (reads usage_hourly, never the raw tables), of the call-id lookup
  and of a time-bounded raw query (partition pruning).

Usage: .venv-dev/bin/python bench/reports_at_scale.py [pairs]. Run it alone (load average in the
output). Needs ~10 GB in /tmp for 5M pairs."""

import datetime as dt
import json
import os
import random
import sys
import time

from _rig import load_avg, migrated_cluster, percentile

from pgcluster import OWNER, OWNER_PW  # noqa: E402  (_rig put tests/ on the path)
from litellm_pglog import report
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from sqlalchemy import text

DAYS = 30
BIG_DAY = 1_000_000  # pairs on the oldest day
CHUNK = 250_000

PARTITIONS = """
DO $$
DECLARE d date; s text;
BEGIN
  FOR d IN SELECT generate_series(current_date - :days, current_date, interval '1 day')::date LOOP
    s := '_p' || to_char(d, 'YYYYMMDD');
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF requests FOR VALUES FROM (%L) TO (%L)',
                   'requests' || s, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF responses FOR VALUES FROM (%L) TO (%L)',
                   'responses' || s, d::timestamp AT TIME ZONE 'UTC', (d + 1)::timestamp AT TIME ZONE 'UTC');
  END LOOP;
END $$;
SELECT pglog_partition_link();
"""

# i in [lo, hi]: pair i's time. The first BIG_DAY pairs fill the oldest day, the others spread over
# the 29 younger days up to an hour ago (so the rollup's lag never hides them).
FILL = """
INSERT INTO requests (call_id, created_at, logged_at, model, call_type, stream, api_key_hash, end_user, tags,
                      payload, event_id)
SELECT 'call-' || i, t, t + interval '2 s',
       (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-sonnet', 'llama-70b'])[1 + i % 4], 'acompletion', i % 5 = 0,
       'h1:' || md5((i % 50)::text), 'user-' || (i % 500), '["team:bench"]',
       jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('role', 'user',
                          'content', repeat(md5(i::text), 28)))), gen_random_uuid()
FROM (SELECT i, CASE WHEN i <= :big
                     THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval ':days days'
                          + (i * 86399.0 / :big) * interval '1 second'
                     ELSE now() - interval '1 hour'
                          - ((i - :big) * ((:days - 1) * 86400.0 - 7200) / greatest(:n - :big, 1)) * interval '1 second'
                END AS t
      FROM generate_series(:lo, :hi) i) g
"""
FILL_RECENT = FILL.replace("""CASE WHEN i <= :big
                     THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval ':days days'
                          + (i * 86399.0 / :big) * interval '1 second'
                     ELSE now() - interval '1 hour'
                          - ((i - :big) * ((:days - 1) * 86400.0 - 7200) / greatest(:n - :big, 1)) * interval '1 second'
                END""", "now() - (i % 120) * interval '1 second'")
FILL_RESPONSES = """
INSERT INTO responses (request_id, request_created_at, created_at, status, prompt_tokens, completion_tokens,
                       total_tokens, cost_usd, latency_ms, ttft_ms, body)
SELECT id, created_at, created_at + interval '800 ms', CASE WHEN id % 20 = 0 THEN 'failure' ELSE 'success' END,
       100 + id % 400, 50 + id % 700, 150 + id % 400 + id % 700, (100 + id % 400) * 0.000003,
       300 + (id * 7919) % 4000, CASE WHEN stream THEN 80 + (id * 104729) % 600 END,
       '{"choices": [{"message": {"role": "assistant", "content": "a short answer of the stub"}}]}'
FROM requests WHERE id BETWEEN :lo AND :hi
"""

LOOKUP = ("SELECT q.id, q.created_at, q.model, r.status, r.total_tokens FROM requests q"
          " JOIN responses r ON r.request_id = q.id AND r.request_created_at = q.created_at WHERE q.call_id = :c")


def timed(conn, sql, params, runs):
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        conn.execute(text(sql), params() if callable(params) else params).all()
        out.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(percentile(out, 50), 2), "p95_ms": round(percentile(out, 95), 2), "runs": runs}


def explain(conn, sql, params):
    return [r[0] for r in conn.execute(text("EXPLAIN " + sql), params)]


def sizes(conn, parent, pairs):
    heap, idx = conn.execute(text(
        "SELECT sum(pg_table_size(relid)), sum(pg_indexes_size(relid)) FROM pg_partition_tree(:p)"
        " WHERE isleaf"), {"p": parent}).one()
    per = 1_000_000 / pairs
    return {"table_mb_per_million": round(int(heap) * per / 2**20), "index_mb_per_million": round(int(idx) * per / 2**20)}


def fill(engine, n):
    """The day partitions, n pairs in CHUNK-sized transactions (the oldest day gets
    min(BIG_DAY, n // 5) of them), then VACUUM ANALYZE. Shared with bench/report_jit_ab.py."""
    big = min(BIG_DAY, n // 5)
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
        conn.execute(text(PARTITIONS.replace(":days", str(DAYS))))
    for lo in range(1, n + 1, CHUNK):
        hi = min(n, lo + CHUNK - 1)
        with engine.begin() as conn:
            conn.execute(text(FILL.replace(":days", str(DAYS))), {"lo": lo, "hi": hi, "big": big, "n": n})
            conn.execute(text(FILL_RESPONSES), {"lo": lo, "hi": hi})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000):
    import sqlalchemy

    big = min(BIG_DAY, n // 5)
    cluster = migrated_cluster()
    try:
        with cluster.admin() as conn:
            for setting in ("shared_buffers = '512MB'", "maintenance_work_mem = '256MB'", "work_mem = '16MB'",
                            "max_wal_size = '4GB'"):
                conn.cursor().execute(f"ALTER SYSTEM SET {setting}")
        cluster.stop()
        cluster.start()
        engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW)), log_connect=False)
        # the package's 30 s statement timeout is for the writer; loading millions of rows takes longer
        sqlalchemy.event.listen(engine, "connect", lambda dbapi, _: dbapi.cursor().execute("SET statement_timeout = 0"))
        t0 = time.monotonic()
        fill(engine, n)
        fill_s = time.monotonic() - t0
        load0 = load_avg()
        out = {"bench": "reports_at_scale", "pairs": n, "days": DAYS, "pairs_oldest_day": big,
               "load_avg_start": load0, "fill_s": round(fill_s)}
        with engine.connect() as conn:
            out["postgresql"] = conn.execute(text("SHOW server_version")).scalar()
            out["sizes"] = {p: sizes(conn, p, n) for p in ("requests", "responses")}
            t = time.monotonic()
            hours = report.refresh(conn, lag_s=0)["hours_recomputed"]
            conn.commit()
            out["rollup_full_refresh"] = {"hours": hours, "s": round(time.monotonic() - t, 1)}
            # what autovacuum does to the freshly filled rollup tables within minutes in service; left to
            # itself here it would run during the timed reports below
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c2:
                c2.execute(text("VACUUM ANALYZE usage_hourly, usage_daily_rollup"))
            # the next minutes' traffic: 10,000 pairs in the last two minutes
            conn.execute(text(FILL_RECENT), {"lo": n + 1, "hi": n + 10_000})
            conn.execute(text(FILL_RESPONSES), {"lo": n + 1, "hi": n + 10_000})
            conn.commit()
            t = time.monotonic()
            hours = report.refresh(conn, lag_s=0)["hours_recomputed"]
            conn.commit()
            out["rollup_incremental_refresh_10k"] = {"hours": hours, "s": round(time.monotonic() - t, 2)}
            queries, plans = {}, {}
            def timed_report(window, by, runs=15):
                ts = []
                for _ in range(runs):
                    t = time.perf_counter()
                    report.usage(conn, window, by)
                    ts.append((time.perf_counter() - t) * 1000)
                return {"p50_ms": round(percentile(ts, 50), 2), "p95_ms": round(percentile(ts, 95), 2), "runs": runs}

            for since in ("7d", "30d"):
                for by in ("key", "model", "user", "day"):
                    queries[f"{by} --since {since}"] = timed_report(report.parse_since(since), by)
            # the cost of a window depends on the hour it starts: its first, partial day is read as up to
            # 12 hourly rows per group (report.window_parts). The same 30 days starting at 12:00 UTC,
            # the most rows either way, whatever the time of day the bench runs at.
            now = conn.execute(text("SELECT now()")).scalar().astimezone(dt.timezone.utc)
            noon = (now - dt.timedelta(days=30)).replace(hour=12, minute=0, second=0, microsecond=0)
            for by in ("user", "key"):
                queries[f"{by} --since 30d starting 12:00 UTC"] = {**timed_report(now - noon, by),
                                                                    "window_starts": noon.isoformat()}
            out["report_window_start_hour_utc"] = (now - dt.timedelta(days=30)).hour
            # the report's own SQL, captured for EXPLAIN
            captured = []
            sqlalchemy.event.listen(engine, "before_cursor_execute",
                                    lambda c, cur, stmt, params, ctx, many: captured.append((stmt, params)))
            with engine.connect() as c2:
                report.usage(c2, report.parse_since("7d"), "key")
                stmt, params = captured[-1]
                plans["report --by key --since 7d"] = [r[0] for r in c2.exec_driver_sql("EXPLAIN " + stmt, params)]
            out["report_queries"] = queries
            out["call_id_lookup"] = timed(conn, LOOKUP, lambda: {"c": f"call-{random.randint(1, n)}"}, 200)
            plans["call_id_lookup"] = explain(conn, LOOKUP, {"c": "call-12345"})
            pruned = ("SELECT count(*) FROM requests q JOIN responses r ON r.request_id = q.id"
                      " AND r.request_created_at = q.created_at WHERE q.created_at >= now() - interval '1 day'")
            out["raw_last_day_count"] = timed(conn, pruned, {}, 5)
            plans["raw_last_day_count"] = explain(conn, pruned, {})
            out["explain"] = plans
            day = conn.execute(text("SELECT to_char(min(created_at) AT TIME ZONE 'UTC', 'YYYYMMDD') FROM requests")
                               ).scalar()
            oldest = conn.execute(text(f"SELECT count(*) FROM requests_p{day}")).scalar()
            conn.commit()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # in service the day retention drops is 90 days old, its pages long written back; here it
            # was written minutes ago (the cluster runs with fsync off): flushed first, timed apart, so
            # the drop is timed without the fill's writeback. Each statement is timed on its own.
            t = time.perf_counter()
            with cluster.admin() as su:  # CHECKPOINT needs a superuser (or pg_checkpoint)
                su.cursor().execute("CHECKPOINT")
            os.sync()
            out["flush_before_drop_s"] = round(time.perf_counter() - t, 2)
            steps = {}
            for step, sql in (("drop_responses_day", f"DROP TABLE responses_p{day}"),
                              ("detach_requests_day", f"ALTER TABLE requests DETACH PARTITION requests_p{day}"),
                              ("drop_requests_day", f"DROP TABLE requests_p{day}")):
                t = time.perf_counter()
                conn.execute(text(sql))
                steps[step] = round(time.perf_counter() - t, 3)
            out["drop_oldest_day"] = {"day": day, "pairs": oldest, "s": round(sum(steps.values()), 3),
                                      "steps_s": steps, "target_s": 1.0}
            out["dead_tuples_after_drop"] = conn.execute(text(
                "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relname ~ '^(requests|responses)_'"
            )).scalar()
        out["targets"] = {"report_and_lookup_p95_ms": 200, "drop_day_s": 1.0}
        out["load_avg_end"] = load_avg()
        engine.dispose()
        print(json.dumps(out, default=str))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
