"""the rollup refresh: one hour and one day at a time, no JIT, no joins between aggregates

Why (bench/reports_at_scale.py, docs/FINDINGS.md): at 5,000,000 pairs a refresh after 10,000 new
pairs took 9.1 s for one hour's worth of rows. auto_explain showed where (500,000 pairs, 2.1 s):
- JIT: each of 0006's statements is estimated far above jit_above_cost (unnest() of an array
  counts as 10-100 rows, the CTEs as thousands) and PostgreSQL compiled it, 260-575 ms each,
  for work of a few milliseconds;
- pglog_rollup_days() joined unnest(days) to usage_hourly as a nested loop around a
  sequential scan of all of usage_hourly (all hours of 30 days) instead of reading one day;
- the three aggregates of a statement (totals, latency and time-to-first-token histograms)
  were joined back together; estimated at one row each, the joins became nested loops that
  rescanned an aggregate per group (350 ms for one hour of 576 rows).
Now:
- pglog_rollup_hour(h): usage_hourly rows of one hour, from that hour's rows alone (both
  tables' partition keys bounded, so one partition pair is read), in one pass: the totals and
  the two histograms are UNION ALL'ed and folded by a single GROUP BY (no join).
- pglog_rollup_day(d): usage_daily_rollup rows of one UTC day from that day's usage_hourly
  rows (an index range on its primary key), the same way. pglog_rollup_days(days) loops over it.
- pglog_rollup_refresh(): finds the hours as before, then one pglog_rollup_hour per hour and
  one pglog_rollup_day per day they fall in.
- every rollup function runs with jit = off (a function-level setting: nothing else changes).
Same rows, same privileges (the refresh stays SECURITY DEFINER, nothing for PUBLIC); nothing is
recomputed by the migration.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = r"""
-- usage_hourly for one hour: the totals, the latency and the time-to-first-token histograms of
-- each (key, user, model, status), folded by one GROUP BY
CREATE FUNCTION pglog_rollup_hour(h timestamptz) RETURNS void
LANGUAGE sql SET TimeZone = 'UTC' SET jit = off AS $$
  WITH raw AS MATERIALIZED (
    SELECT q.api_key_hash, coalesce(q.end_user, '') AS end_user, q.model, r.status,
           r.prompt_tokens, r.completion_tokens, r.total_tokens,
           CASE WHEN r.cost_usd = 'NaN' THEN 0 ELSE r.cost_usd END AS cost_usd, r.latency_ms,
           pglog_hist_bucket(r.latency_ms)::smallint AS lb, pglog_hist_bucket(r.ttft_ms)::smallint AS tb
    FROM requests q
    JOIN responses r ON r.request_id = q.id AND r.request_created_at = q.created_at
    WHERE q.created_at >= h AND q.created_at < h + interval '1 hour'
      AND r.request_created_at >= h AND r.request_created_at < h + interval '1 hour'),
  parts AS (
    SELECT api_key_hash, end_user, model, status, 0 AS part, NULL::smallint AS b, count(*) AS n,
           sum(prompt_tokens) AS pt, sum(completion_tokens) AS ct, sum(total_tokens) AS tt,
           sum(cost_usd) AS cost, sum(latency_ms) AS lsum, count(tb) AS tcalls
    FROM raw GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT api_key_hash, end_user, model, status, 1, lb, count(*), NULL, NULL, NULL, NULL, NULL, NULL
    FROM raw WHERE lb IS NOT NULL GROUP BY 1, 2, 3, 4, 6
    UNION ALL
    SELECT api_key_hash, end_user, model, status, 2, tb, count(*), NULL, NULL, NULL, NULL, NULL, NULL
    FROM raw WHERE tb IS NOT NULL GROUP BY 1, 2, 3, 4, 6)
  INSERT INTO usage_hourly (hour, api_key_hash, end_user, model, status, calls, prompt_tokens, completion_tokens,
                            total_tokens, cost_usd, latency_ms_sum, ttft_calls, latency_buckets, latency_counts,
                            ttft_buckets, ttft_counts)
  SELECT h, api_key_hash, end_user, model, status,
         sum(n) FILTER (WHERE part = 0), sum(pt), sum(ct), sum(tt), sum(cost), sum(lsum), sum(tcalls),
         coalesce(array_agg(b ORDER BY b) FILTER (WHERE part = 1), '{}'),
         coalesce(array_agg(n::integer ORDER BY b) FILTER (WHERE part = 1), '{}'),
         coalesce(array_agg(b ORDER BY b) FILTER (WHERE part = 2), '{}'),
         coalesce(array_agg(n::integer ORDER BY b) FILTER (WHERE part = 2), '{}')
  FROM parts GROUP BY 2, 3, 4, 5;
$$;
REVOKE ALL ON FUNCTION pglog_rollup_hour(timestamptz) FROM PUBLIC;

-- usage_daily_rollup for one UTC day, from that day's usage_hourly rows, the same way
CREATE FUNCTION pglog_rollup_day(d timestamptz) RETURNS void
LANGUAGE sql SET TimeZone = 'UTC' SET jit = off AS $$
  DELETE FROM usage_daily_rollup WHERE day = d;
  WITH src AS MATERIALIZED (
    SELECT * FROM usage_hourly WHERE hour >= d AND hour < d + interval '1 day'),
  parts AS (
    SELECT api_key_hash, end_user, model, status, 0 AS part, NULL::smallint AS b, sum(calls) AS n,
           sum(prompt_tokens) AS pt, sum(completion_tokens) AS ct, sum(total_tokens) AS tt,
           sum(cost_usd) AS cost, sum(latency_ms_sum) AS lsum, sum(ttft_calls) AS tcalls
    FROM src GROUP BY 1, 2, 3, 4
    UNION ALL
    SELECT api_key_hash, end_user, model, status, 1, t.b, sum(t.n), NULL, NULL, NULL, NULL, NULL, NULL
    FROM src, unnest(src.latency_buckets, src.latency_counts) AS t(b, n) GROUP BY 1, 2, 3, 4, 6
    UNION ALL
    SELECT api_key_hash, end_user, model, status, 2, t.b, sum(t.n), NULL, NULL, NULL, NULL, NULL, NULL
    FROM src, unnest(src.ttft_buckets, src.ttft_counts) AS t(b, n) GROUP BY 1, 2, 3, 4, 6)
  INSERT INTO usage_daily_rollup (day, api_key_hash, end_user, model, status, calls, prompt_tokens,
                                  completion_tokens, total_tokens, cost_usd, latency_ms_sum, latency_buckets,
                                  latency_counts, ttft_calls, ttft_buckets, ttft_counts)
  SELECT d, api_key_hash, end_user, model, status,
         sum(n) FILTER (WHERE part = 0), sum(pt), sum(ct), sum(tt), sum(cost), sum(lsum),
         coalesce(array_agg(b ORDER BY b) FILTER (WHERE part = 1), '{}'),
         coalesce(array_agg(n::integer ORDER BY b) FILTER (WHERE part = 1), '{}'),
         sum(tcalls),
         coalesce(array_agg(b ORDER BY b) FILTER (WHERE part = 2), '{}'),
         coalesce(array_agg(n::integer ORDER BY b) FILTER (WHERE part = 2), '{}')
  FROM parts GROUP BY 2, 3, 4, 5;
$$;
REVOKE ALL ON FUNCTION pglog_rollup_day(timestamptz) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pglog_rollup_days(days timestamptz[]) RETURNS void
LANGUAGE plpgsql SET TimeZone = 'UTC' SET jit = off AS $$
DECLARE
  d timestamptz;
BEGIN
  FOREACH d IN ARRAY days LOOP
    PERFORM pglog_rollup_day(d);
  END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION pglog_rollup_refresh(lag interval DEFAULT '60 seconds') RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public SET TimeZone = 'UTC' SET jit = off AS $$
DECLARE
  since timestamptz;
  upto  timestamptz := now() - lag;
  hours timestamptz[];
  h     timestamptz;
BEGIN
  -- one refresher at a time (a second one waits here, then finds nothing to do)
  SELECT logged_through INTO since FROM usage_rollup_state WHERE id FOR UPDATE;
  IF upto <= since THEN
    RETURN 0;
  END IF;
  SELECT coalesce(array_agg(DISTINCT date_trunc('hour', created_at)), '{}') INTO hours
  FROM requests WHERE logged_at > since AND logged_at <= upto;
  DELETE FROM usage_hourly WHERE hour = ANY (hours);
  FOREACH h IN ARRAY hours LOOP
    PERFORM pglog_rollup_hour(h);
  END LOOP;
  PERFORM pglog_rollup_days(ARRAY(SELECT DISTINCT date_trunc('day', t.h) FROM unnest(hours) AS t(h)));
  UPDATE usage_rollup_state SET logged_through = upto, refreshed_at = now() WHERE id;
  RETURN cardinality(hours);
END
$$;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # 0006's two functions as 0006 wrote them (a frozen snapshot: its module keeps the SQL), then
    # the helpers go. A replaced function takes the SET clauses of its new text (jit = off goes).
    import importlib

    sql = importlib.import_module("litellm_pglog.migrations.versions.0006_rollup_sparse_daily").UPGRADE
    for name in ("CREATE FUNCTION pglog_rollup_days", "CREATE OR REPLACE FUNCTION pglog_rollup_refresh"):
        start = sql.index(name)
        op.execute(sql[start:sql.index("\n$$;", start) + 4].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP FUNCTION pglog_rollup_hour(timestamptz)")
    op.execute("DROP FUNCTION pglog_rollup_day(timestamptz)")
