"""Usage reports from the hourly rollup (migration 0004): never a scan of the raw log tables.

`refresh()` brings usage_hourly up to date (pglog_rollup_refresh: only the hours that got rows
since the last refresh are recomputed); `usage()` groups the rollup by one dimension over a
window and derives percentiles from the summed histograms (bucket width +-12 %).
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
    if by not in DIMENSIONS:
        raise ValueError(f"--by {by!r}: one of {', '.join(DIMENSIONS)}")
    dim = DIMENSIONS[by]
    order = "1" if by in ("day", "hour") else "cost_usd DESC, calls DESC, 1"
    result = conn.execute(text(f"""
        SELECT {dim} AS {by},
               sum(calls) AS calls,
               coalesce(sum(calls) FILTER (WHERE status = 'success'), 0) AS success,
               coalesce(sum(calls) FILTER (WHERE status = 'failure'), 0) AS failure,
               coalesce(sum(calls) FILTER (WHERE status = 'client_disconnected'), 0) AS client_disconnected,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
               sum(cost_usd) AS cost_usd,
               pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.5) AS latency_ms_p50,
               pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.95) AS latency_ms_p95,
               pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.99) AS latency_ms_p99,
               pglog_hist_quantile(pglog_hist_sum(ttft_hist), 0.5) AS ttft_ms_p50,
               pglog_hist_quantile(pglog_hist_sum(ttft_hist), 0.95) AS ttft_ms_p95
        FROM usage_hourly
        WHERE hour >= date_trunc('hour', now() - :since)
        GROUP BY 1 ORDER BY {order}"""), {"since": since})
    return list(result.keys()), [tuple(r) for r in result]
