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


def usage(conn: Connection, since: dt.timedelta, by: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Group the window [the hour of now - since, now] by one dimension. Whole UTC days come from
    usage_daily_rollup, the hours before the first whole day from usage_hourly (a grouping by
    hour reads usage_hourly only). Percentiles: the non-empty buckets of every row in a group are
    summed by one GROUP BY, then the bucket holding each quantile is found (bucket width +-12 %).
    Every dimension is a NOT NULL column of the rollup, so totals and quantiles join on plain
    equality: a hash join (IS NOT DISTINCT FROM made it a nested loop, 500 x 500 groups by user)."""
    if by not in DIMENSIONS:
        raise ValueError(f"--by {by!r}: one of {', '.join(DIMENSIONS)}")
    dim = DIMENSIONS[by]
    daily_dim = "day" if by == "day" else dim
    order = "1" if by in ("day", "hour") else "cost_usd DESC, calls DESC, 1"
    cols = ("status, calls, prompt_tokens, completion_tokens, cost_usd,"
            " latency_buckets, latency_counts, ttft_buckets, ttft_counts")
    # a grouping by hour cannot read days: the daily level starts after the window then
    first_day = "'infinity'::timestamptz" if by == "hour" else \
        "date_trunc('day', date_trunc('hour', now() - :since) + interval '1 day' - interval '1 microsecond', 'UTC')"
    result = conn.execute(text(f"""
        WITH win AS (
          SELECT {dim} AS g, {cols} FROM usage_hourly
          WHERE hour >= date_trunc('hour', now() - :since) AND hour < {first_day}
          UNION ALL
          SELECT {daily_dim} AS g, {cols} FROM usage_daily_rollup WHERE day >= {first_day}),
        totals AS (
          SELECT g, sum(calls) AS calls,
                 coalesce(sum(calls) FILTER (WHERE status = 'success'), 0) AS success,
                 coalesce(sum(calls) FILTER (WHERE status = 'failure'), 0) AS failure,
                 coalesce(sum(calls) FILTER (WHERE status = 'client_disconnected'), 0) AS client_disconnected,
                 sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
                 sum(cost_usd) AS cost_usd
          FROM win GROUP BY g),
        buckets AS (
          SELECT g, 'latency' AS kind, t.b, sum(t.n) AS n FROM win, unnest(win.latency_buckets, win.latency_counts) AS t(b, n)
          GROUP BY 1, 2, 3
          UNION ALL
          SELECT g, 'ttft', t.b, sum(t.n) FROM win, unnest(win.ttft_buckets, win.ttft_counts) AS t(b, n)
          GROUP BY 1, 2, 3),
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
        ORDER BY {order}"""), {"since": since})
    return list(result.keys()), [tuple(r) for r in result]
