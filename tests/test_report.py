"""The hourly usage rollup (migration 0004) and `litellm-pglog report` (issue 14 items 4/5):
the rollup agrees with the raw rows it summarises, late rows re-open their hour without double
counting, the writer may refresh but not write it, and the report reads only the rollup."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time

import pytest

from conftest import query
from helpers import make_slo
from litellm_pglog import records
from litellm_pglog.insert import insert_batch
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from pgcluster import DB
from sqlalchemy import text

HOUR = 3600.0


@pytest.fixture
def rollup_db(clean_db):
    with clean_db.admin(DB) as conn:
        cur = conn.cursor()
        cur.execute("TRUNCATE usage_hourly, usage_daily_rollup")
        cur.execute("UPDATE usage_rollup_state SET logged_through = '-infinity'")
    return clean_db


@pytest.fixture
def engine(rollup_db):
    e = make_engine(Settings.from_env(rollup_db.env()), log_connect=False)
    yield e
    e.dispose()


def row(i: int, at: float, *, model="gpt-a", key=b"k1", status="success", latency_ms=100.0, ttft_ms=None, user=None):
    slo = make_slo(i, model_group=model, status=status, startTime=at, endTime=at + latency_ms / 1000.0,
                   stream=ttft_ms is not None, end_user=user, prompt_tokens=10, completion_tokens=5,
                   total_tokens=15, response_cost=0.25,
                   metadata={"user_api_key_hash": records.key_digest(key.decode())})
    if ttft_ms is not None:
        slo["completionStartTime"] = at + ttft_ms / 1000.0
    return records.prepare(records.capture(slo), 4096)


def refresh(cluster, lag="0 seconds"):
    return query(cluster, "SELECT pglog_rollup_refresh(%s::interval)", (lag,))[0][0]


def test_rollup_matches_the_raw_rows_and_percentiles_fall_in_their_bucket(engine, rollup_db):
    base = (time.time() // HOUR - 5) * HOUR  # five hours ago, on the hour
    rows = [row(i, base + 60 + i, latency_ms=10.0 * (i + 1)) for i in range(100)]  # 10..1000 ms
    rows += [row(200 + i, base + HOUR + i, model="gpt-b", status="failure", latency_ms=5.0) for i in range(7)]
    rows += [row(300 + i, base + 2 * HOUR + i, ttft_ms=250.0, latency_ms=900.0) for i in range(4)]
    assert insert_batch(engine, rows)[0] == len(rows)
    assert refresh(rollup_db) == 3  # three hours touched
    raw = query(rollup_db, "SELECT count(*), sum(r.total_tokens), sum(r.cost_usd) FROM requests q JOIN responses r"
                           " ON r.request_id = q.id")[0]
    rolled = query(rollup_db, "SELECT sum(calls), sum(total_tokens), sum(cost_usd) FROM usage_hourly")[0]
    assert rolled == raw
    by_hour = query(rollup_db, "SELECT extract(epoch FROM hour)::bigint, model, status, calls, ttft_calls,"
                               " pglog_hist_quantile(latency_buckets, latency_counts, 0.5),"
                               " pglog_hist_quantile(latency_buckets, latency_counts, 0.99),"
                               " pglog_hist_quantile(ttft_buckets, ttft_counts, 0.5) FROM usage_hourly ORDER BY 1")
    (h0, m0, s0, c0, t0, p50, p99, _), (h1, m1, s1, c1, *_), (h2, _, _, c2, t2, _, _, ttft50) = by_hour
    assert (h0, m0, s0, c0, t0) == (int(base), "gpt-a", "success", 100, 0)
    assert (h1, m1, s1, c1) == (int(base + HOUR), "gpt-b", "failure", 7)
    assert (c2, t2) == (4, 4)
    # exact p50 of 10..1000 ms is 500, p99 990: the bucket's middle is within +-12 %
    assert 500 / 1.13 <= p50 <= 500 * 1.13, p50
    assert 990 / 1.13 <= p99 <= 990 * 1.13, p99
    assert 250 / 1.13 <= ttft50 <= 250 * 1.13, ttft50
    # the daily level holds the same totals and the same merged percentiles
    daily = query(rollup_db, "SELECT sum(calls), sum(total_tokens), sum(cost_usd) FROM usage_daily_rollup")[0]
    assert daily == raw
    sparse = query(rollup_db, "SELECT latency_buckets, latency_counts FROM usage_hourly ORDER BY hour LIMIT 1")[0]
    assert sparse[0] == sorted(sparse[0]) and 0 not in sparse[1] and sum(sparse[1]) == 100
    # a report over the window agrees with the exact figures within the bucket width, whichever
    # level (hours or days) the window reads
    from litellm_pglog.report import usage
    import datetime as dt
    with engine.connect() as conn:
        for since in (dt.timedelta(hours=8), dt.timedelta(days=3)):
            cols, got = usage(conn, since, "model")
            by_model = {r[0]: dict(zip(cols, r)) for r in got}
            assert by_model["gpt-a"]["calls"] == 104 and by_model["gpt-b"]["calls"] == 7
            assert by_model["gpt-b"]["failure"] == 7
            assert 5 / 1.13 <= by_model["gpt-b"]["latency_ms_p50"] <= 5 * 1.13
            assert 250 / 1.13 <= by_model["gpt-a"]["ttft_ms_p50"] <= 250 * 1.13


def test_late_rows_reopen_their_hour_without_double_counting(engine, rollup_db):
    base = (time.time() // HOUR - 30) * HOUR  # a day and more ago: a spool replay after an outage
    insert_batch(engine, [row(i, base + i) for i in range(10)])
    assert refresh(rollup_db) == 1
    assert refresh(rollup_db) == 0  # nothing new: nothing recomputed
    insert_batch(engine, [row(100 + i, base + 100 + i) for i in range(5)])  # late, same hour
    insert_batch(engine, [row(200, time.time() - 10)])  # and one of now
    assert refresh(rollup_db) == 2
    assert query(rollup_db, "SELECT sum(calls) FROM usage_hourly")[0][0] == 16
    assert query(rollup_db, "SELECT calls FROM usage_hourly WHERE hour = to_timestamp(%s)", (base,))[0][0] == 15


def test_an_incremental_refresh_reads_only_the_partitions_of_its_hours(engine, rollup_db):
    """A refresh after new rows recomputes their hours from that day's partitions alone (0007):
    no other day's responses partition is read. The counters are this transaction's own
    (pg_stat_xact_user_tables), so nothing else on the cluster can move them. Requests partitions
    are not judged: finding the hours that got rows reads ix_requests_logged_at in each of them
    (logged_at is not the partition key)."""
    midnight = time.time() // 86400 * 86400
    insert_batch(engine, [row(i, midnight - 3600 + i) for i in range(5)]  # yesterday
                 + [row(10 + i, midnight - 3 * 86400 + i) for i in range(5)]  # the DEFAULT partition
                 + [row(20 + i, time.time() - 120 + i) for i in range(5)])  # today
    refresh(rollup_db)
    insert_batch(engine, [row(30, time.time() - 5)])
    today = time.strftime("%Y%m%d", time.gmtime())
    with rollup_db.admin(DB) as conn:
        cur = conn.cursor()
        cur.execute("BEGIN")  # the counters below are this transaction's
        cur.execute("SELECT pglog_rollup_refresh('0 seconds')")
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT relname FROM pg_stat_xact_user_tables WHERE relname LIKE 'responses%%'"
                    " AND seq_scan + coalesce(idx_scan, 0) > 0 ORDER BY 1")
        read = [r[0] for r in cur.fetchall()]
        cur.execute("COMMIT")
    assert read == [f"responses_p{today}"], read
    assert query(rollup_db, "SELECT sum(calls) FROM usage_hourly")[0][0] == 16


def test_rows_younger_than_the_lag_wait_for_the_next_refresh(engine, rollup_db):
    insert_batch(engine, [row(1, time.time() - 5)])
    assert refresh(rollup_db, "1 hour") == 0
    assert query(rollup_db, "SELECT count(*) FROM usage_hourly")[0][0] == 0
    assert refresh(rollup_db, "0 seconds") == 1


def test_the_writer_may_refresh_but_not_write_the_rollup(engine, rollup_db):
    from sqlalchemy import exc, text

    with engine.begin() as conn:  # the engine logs in as the writer
        conn.execute(text("SELECT pglog_rollup_refresh('0 seconds')"))
    for sql in ("DELETE FROM usage_hourly", "UPDATE usage_rollup_state SET logged_through = now()",
                "INSERT INTO usage_hourly (hour) VALUES (now())", "TRUNCATE usage_hourly"):
        with pytest.raises(exc.ProgrammingError, match="permission denied"):
            with engine.begin() as conn:
                conn.execute(text(sql))
    # nobody else may run the SECURITY DEFINER function: no ACL entry for PUBLIC (empty grantee)
    acl = query(rollup_db, "SELECT proacl::text FROM pg_proc WHERE proname = 'pglog_rollup_refresh'")[0][0]
    assert acl and not any(entry.startswith("=") for entry in acl.strip("{}").split(",")), acl


def _run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "litellm_pglog.cli", *args], env={**env, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=60)


def _cli(cluster, *args: str) -> str:
    out = _run(cluster.env(), "report", *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_window_is_exact_to_the_hour_whichever_way_its_first_day_is_read(engine, rollup_db):
    """report.usage() reads a window's first, partial day as its hours or as the daily row minus
    the hours before the window (window_parts, whichever is fewer rows). For every start hour of
    that day, calls and cost equal the raw rows inside the window, rows before it count nowhere
    (not even as a group of 0 calls), and the median latency is that of the rows inside (within
    the bucket width)."""
    import datetime as dt
    from litellm_pglog.report import usage

    day = (time.time() // 86400 - 3) * 86400  # a whole UTC day three days ago
    latency = {day + h * HOUR + 60: 100.0 * (h + 1) for h in range(24)}  # one call an hour, 100..2400 ms
    latency.update({day + 86400 + 5 * HOUR + i: 3000.0 for i in range(2)})  # the next day
    latency.update({day - 60 * (i + 1): 10.0 for i in range(3)})  # the day before
    early = row(99, day + 30, model="gpt-early")  # a model only in hour 0: gone from windows after it
    # the call of hour 0 is the only stream: its first-token time leaves the windows after it
    assert insert_batch(engine, [row(i, at, latency_ms=ms, ttft_ms=50.0 if at == day + 60 else None)
                                 for i, (at, ms) in enumerate(latency.items())]
                        + [early])[0] == 30
    refresh(rollup_db)
    with engine.connect() as conn:
        for k in range(24):
            start = day + k * HOUR
            since = dt.timedelta(seconds=time.time() - start - 1800)  # the window starts on hour k
            inside = sorted(ms for at, ms in latency.items() if at >= start)
            cols, got = usage(conn, since, "model")
            models = {r[0]: dict(zip(cols, r)) for r in got}
            assert set(models) == ({"gpt-a", "gpt-early"} if k == 0 else {"gpt-a"}), k
            only = models["gpt-a"]
            assert (only["calls"], only["cost_usd"]) == (len(inside), 0.25 * len(inside)), k
            median = inside[-(-len(inside) // 2) - 1]  # nearest rank, as the report's cum >= 0.5 total
            assert median / 1.13 <= only["latency_ms_p50"] <= median * 1.13, (k, only, median)
            assert (k != 0 or 50 / 1.13 <= only["ttft_ms_p50"] <= 50 * 1.13) and (k == 0 or only["ttft_ms_p50"] is None)
            by_day = {r[0].timestamp(): r[1] for r in usage(conn, since, "day")[1]}
            assert by_day == {day: 24 - k + (k == 0), day + 86400: 2}, k
            by_hour = {r[0].timestamp(): r[1] for r in usage(conn, since, "hour")[1]}
            assert by_hour == {**{day + h * HOUR: 1 + (h == 0) for h in range(k, 24)}, day + 86400 + 5 * HOUR: 2}, k


def test_report_cli_groups_the_rollup_in_every_format(engine, rollup_db):
    now = time.time()
    insert_batch(engine, [row(i, now - 3 * HOUR + i, model="gpt-a", key=b"k1") for i in range(6)]
                 + [row(10 + i, now - 2 * HOUR + i, model="gpt-b", key=b"k2", status="failure") for i in range(3)]
                 + [row(20, now - 9 * 24 * HOUR, model="gpt-old")])  # outside a 7 d window
    doc = json.loads(_cli(rollup_db, "--since", "7d", "--by", "model", "--format", "json", "--lag", "0"))
    got = {r["model"]: (r["calls"], r["success"], r["failure"], r["cost_usd"]) for r in doc["rows"]}
    assert got == {"gpt-a": (6, 6, 0, 1.5), "gpt-b": (3, 0, 3, 0.75)}
    assert doc["rollup"]["hours_recomputed"] >= 3
    rows = list(csv.reader(io.StringIO(_cli(rollup_db, "--since", "30d", "--by", "key", "--format", "csv",
                                            "--no-refresh"))))
    assert rows[0][:3] == ["key", "calls", "success"]
    assert sorted((r[0], r[1]) for r in rows[1:]) == sorted(
        [(records.stored_key_hash("k1"), "7"), (records.stored_key_hash("k2"), "3")])
    text_out = _cli(rollup_db, "--since", "24h", "--by", "day", "--no-refresh")
    assert text_out.startswith("usage over the last 24h by day") and "(1 row)" in text_out


def test_report_reads_the_rollup_not_the_raw_tables(engine, rollup_db):
    """Run the report as a role that may read usage_hourly and nothing else: a report that
    touched requests or responses would fail with "permission denied"."""
    insert_batch(engine, [row(1, time.time() - HOUR)])
    _cli(rollup_db, "--lag", "0")
    with rollup_db.admin(DB) as conn:
        cur = conn.cursor()
        cur.execute("DROP ROLE IF EXISTS pglog_rollup_only")
        cur.execute("CREATE ROLE pglog_rollup_only LOGIN PASSWORD 'rollup-only-pw'")
        cur.execute(f"GRANT CONNECT ON DATABASE {DB} TO pglog_rollup_only")
        cur.execute("GRANT USAGE ON SCHEMA public TO pglog_rollup_only")
        cur.execute("GRANT SELECT ON usage_hourly, usage_daily_rollup TO pglog_rollup_only")
    try:
        env = rollup_db.env("pglog_rollup_only", "rollup-only-pw")
        out = _run(env, "report", "--no-refresh", "--by", "user", "--format", "json")
        assert out.returncode == 0, out.stderr[-800:]
        assert [r["calls"] for r in json.loads(out.stdout)["rows"]] == [1]
        denied = _run(env, "evidence", "join-check", "--tag", "x")
        assert denied.returncode != 0 and "permission denied" in denied.stderr  # the probe can fail
    finally:
        with rollup_db.admin(DB) as conn:
            cur = conn.cursor()
            cur.execute("REVOKE ALL ON usage_hourly, usage_daily_rollup FROM pglog_rollup_only")
            cur.execute("REVOKE ALL ON SCHEMA public FROM pglog_rollup_only")
            cur.execute(f"REVOKE ALL ON DATABASE {DB} FROM pglog_rollup_only")
            cur.execute("DROP ROLE pglog_rollup_only")


def test_the_report_runs_without_jit_and_leaves_the_session_setting_alone(engine, rollup_db):
    """A 30-day report grouped by user is estimated far above jit_above_cost, and PostgreSQL
    compiled it with LLVM: 50-100 ms of a ~200 ms report at 500,000 pairs (FINDINGS, issue 14).
    The report turns JIT off for its own transaction only (SET LOCAL)."""
    from litellm_pglog import report

    insert_batch(engine, [row(1, time.time() - HOUR)])
    refresh(rollup_db)
    with engine.connect() as conn:
        conn.execute(text("SET jit = on"))
        conn.commit()
        cols, rows = report.usage(conn, report.parse_since("30d"), "user")
        assert [r[cols.index("calls")] for r in rows] == [1]
        assert conn.execute(text("SHOW jit")).scalar() == "off"  # the report's transaction
        conn.commit()
        assert conn.execute(text("SHOW jit")).scalar() == "on"  # the session's own setting again


@pytest.mark.parametrize("since", ["", "7", "0d", "1y", "-3d"])
def test_bad_since_is_a_usage_error(rollup_db, since):
    out = _run(rollup_db.env(), "report", f"--since={since}")
    assert out.returncode == 2 and "expected a positive count and a unit" in out.stderr
