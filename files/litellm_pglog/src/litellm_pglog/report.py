"""Usage reports from the rollup (migrations 0004, 0006, 0007): never a scan of the raw log tables.

`refresh()` brings the rollup up to date (pglog_rollup_refresh: only the hours that got rows
since the last refresh are recomputed, one at a time from their own partitions since 0007);
`usage()` groups the rollup by one dimension over a window and derives percentiles from the
summed histograms (bucket width +-12 %).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from sqlalchemy import Connection, text

# what a report can be grouped by -> the rollup's expression for it
DIMENSIONS = {
    "key": "api_key_hash",
    "model": "model",
    "user": "end_user",
    "status": "status",
    "day": "date_trunc('day', hour, 'UTC')",
    "hour": "hour",
}
# the rollup columns a report reads
_COLUMNS = ("status, calls, prompt_tokens, completion_tokens, cost_usd,"
            " latency_buckets, latency_counts, ttft_buckets, ttft_counts")
FOREVER = dt.datetime.max.replace(tzinfo=dt.timezone.utc)  # no upper bound
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str) -> dt.timedelta:
    """'90m', '24h', '7d', '2w' -> a window ending now. ValueError with the accepted forms."""
    m = re.fullmatch(r"\s*(\d{1,5})\s*([mhdw])\s*", value or "")
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"--since {value!r}: expected a positive count and a unit, e.g. 90m, 24h, 7d, 2w")
    return dt.timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})


def refresh(conn: Connection, lag_s: float = 60.0) -> dict[str, Any]:
    hours = conn.execute(text("SELECT pglog_rollup_refresh(make_interval(secs => :lag))"), {"lag": lag_s}).scalar()
    through = conn.execute(text("SELECT logged_through FROM usage_rollup_state")).scalar()
    return {"hours_recomputed": hours, "logged_through": through}


def window_parts(start: dt.datetime, by: str) -> list[tuple[str, dt.datetime, dt.datetime, int]]:
    """The rollup rows that make up the window [start, now], start on a whole UTC hour, as
    (level, from, to, sign) ranges: whole days from usage_daily_rollup, and the hours of the
    window's first, partial day from usage_hourly. The partial day is read whichever way needs
    fewer rows: its hours inside the window when it starts at 12:00 or later (1 to 12 of them,
    sign +1), else its whole daily row minus the hours before the window (1 to 11 of them,
    sign -1). Counts, tokens, cost and
    histogram buckets are sums, so the subtraction is exact: the daily row is folded from the
    same hourly rows in the same refresh (pglog_rollup_day). A grouping by hour reads hours only."""
    start = start.astimezone(dt.timezone.utc)
    if by == "hour":
        return [("hourly", start, FOREVER, 1)]
    day0 = start.replace(hour=0, minute=0, second=0, microsecond=0)
    if start == day0:
        return [("daily", day0, FOREVER, 1)]
    if start.hour <= 11:
        return [("daily", day0, FOREVER, 1), ("hourly", day0, start, -1)]
    return [("hourly", start, day0 + dt.timedelta(days=1), 1), ("daily", day0 + dt.timedelta(days=1), FOREVER, 1)]


def usage(conn: Connection, since: dt.timedelta, by: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Group the window [the hour of now - since, now] by one dimension, from the rollup rows of
    window_parts(). Percentiles: the non-empty buckets of every row in a group are summed by one
    GROUP BY, then the bucket holding each quantile is found (bucket width +-12 %). The buckets
    are unnested in the select list (a ProjectSet streams them; unnest() in FROM materialised
    each row's arrays: 25 % slower at 25,000 rows); the sign is applied inside the aggregate (as
    a projection above the ProjectSet it cost another 10 %). Every dimension is a NOT NULL
    column of the rollup, so totals and quantiles join on plain equality: a hash join (IS NOT
    DISTINCT FROM made it a nested loop, 500 x 500 groups by user). Runs with JIT off (SET LOCAL:
    until the caller's transaction ends)."""
    if by not in DIMENSIONS:
        raise ValueError(f"--by {by!r}: one of {', '.join(DIMENSIONS)}")
    start = conn.execute(text("SELECT date_trunc('hour', now() - :since, 'UTC')"), {"since": since}).scalar()
    dim = {"hourly": DIMENSIONS[by], "daily": "day" if by == "day" else DIMENSIONS[by]}
    selects, params = [], {}
    for i, (level, lo, hi, sign) in enumerate(window_parts(start, by)):
        table, column = ("usage_hourly", "hour") if level == "hourly" else ("usage_daily_rollup", "day")
        bound = f"{column} >= :lo{i}" + ("" if hi is FOREVER else f" AND {column} < :hi{i}")
        selects.append(f"SELECT {dim[level]} AS g, {sign} AS sgn, {_COLUMNS} FROM {table} WHERE {bound}")
        params.update({f"lo{i}": lo, f"hi{i}": hi})
    order = "1" if by in ("day", "hour") else "cost_usd DESC, calls DESC, 1"
    # The planner estimates the unnested buckets far above jit_above_cost, and LLVM compiled the
    # query on every run: 50-100 ms of a ~200 ms 30-day report by user at 500,000 pairs, for
    # work of milliseconds per row. Off for this transaction only, as the rollup functions are.
    conn.execute(text("SET LOCAL jit = off"))
    result = conn.execute(text(f"""
        WITH win AS ({" UNION ALL ".join(selects)}),
        totals AS (
          SELECT g, sum(sgn * calls) AS calls,
                 coalesce(sum(sgn * calls) FILTER (WHERE status = 'success'), 0) AS success,
                 coalesce(sum(sgn * calls) FILTER (WHERE status = 'failure'), 0) AS failure,
                 coalesce(sum(sgn * calls) FILTER (WHERE status = 'client_disconnected'), 0) AS client_disconnected,
                 sum(sgn * prompt_tokens) AS prompt_tokens, sum(sgn * completion_tokens) AS completion_tokens,
                 sum(sgn * cost_usd) AS cost_usd
          FROM win GROUP BY g HAVING sum(sgn * calls) > 0),
        latency AS (SELECT g, sgn, unnest(latency_buckets) AS b, unnest(latency_counts) AS n FROM win),
        ttft AS (SELECT g, sgn, unnest(ttft_buckets) AS b, unnest(ttft_counts) AS n FROM win),
        buckets AS (
          SELECT g, 'latency' AS kind, b, sum(sgn * n) AS n FROM latency GROUP BY g, b HAVING sum(sgn * n) > 0
          UNION ALL
          SELECT g, 'ttft', b, sum(sgn * n) FROM ttft GROUP BY g, b HAVING sum(sgn * n) > 0),
        cumulative AS (
          SELECT g, kind, b, sum(n) OVER (PARTITION BY g, kind ORDER BY b) AS cum,
                 sum(n) OVER (PARTITION BY g, kind) AS total FROM buckets),
        quantiles AS (
          SELECT g,
                 pglog_bucket_ms(min(b) FILTER (WHERE kind = 'latency' AND cum >= 0.5 * total)) AS latency_ms_p50,
                 pglog_bucket_ms(min(b) FILTER (WHERE kind = 'latency' AND cum >= 0.95 * total)) AS latency_ms_p95,
                 pglog_bucket_ms(min(b) FILTER (WHERE kind = 'latency' AND cum >= 0.99 * total)) AS latency_ms_p99,
                 pglog_bucket_ms(min(b) FILTER (WHERE kind = 'ttft' AND cum >= 0.5 * total)) AS ttft_ms_p50,
                 pglog_bucket_ms(min(b) FILTER (WHERE kind = 'ttft' AND cum >= 0.95 * total)) AS ttft_ms_p95
          FROM cumulative GROUP BY g)
        SELECT t.g AS {by}, t.calls, t.success, t.failure, t.client_disconnected, t.prompt_tokens,
               t.completion_tokens, t.cost_usd, q.latency_ms_p50, q.latency_ms_p95, q.latency_ms_p99,
               q.ttft_ms_p50, q.ttft_ms_p95
        FROM totals t LEFT JOIN quantiles q ON q.g = t.g
        ORDER BY {order}"""), params)
    return list(result.keys()), [tuple(r) for r in result]
