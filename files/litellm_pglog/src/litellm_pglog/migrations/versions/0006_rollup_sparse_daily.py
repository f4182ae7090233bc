"""usage rollup at scale: sparse histograms and a daily level

Why (bench/reports_at_scale.py; docs/FINDINGS.md): a report merges many rollup rows. With 64-bucket
dense histograms the merge was a SQL aggregate calling a SQL function per row (~35-70 us each),
and a window of days read every hourly row: 0.8 s for a 7-day report at 50,000 calls, seconds
at millions. Now:
- usage_hourly keeps each histogram as its non-empty buckets only: latency_buckets smallint[]
  (ascending bucket numbers) with latency_counts integer[], and ttft_buckets/ttft_counts. A merge
  is one native GROUP BY over unnest(buckets, counts) (~10 entries a row, not 64 function
  calls). Existing rows are converted, nothing is recomputed from the raw tables.
- usage_daily_rollup: the same per UTC day, kept by pglog_rollup_refresh() (it recomputes the
  days of the hours it recomputed, from usage_hourly). Reports read whole days from it and only
  the hours before the first whole day from usage_hourly.
- usage_daily (the view for BI tools) reads usage_daily_rollup; same columns as before.
- pglog_hist_quantile(buckets, counts, q): the geometric middle of the bucket holding the
  q-quantile (bucket i = [2^(i/3), 2^((i+1)/3)) ms, as before). pglog_hist, pglog_hist_add and
  pglog_hist_sum (dense arrays) are dropped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

DIMS = "api_key_hash, end_user, model, status"

UPGRADE = r"""
ALTER TABLE usage_hourly
  ADD COLUMN latency_buckets smallint[], ADD COLUMN latency_counts integer[],
  ADD COLUMN ttft_buckets smallint[], ADD COLUMN ttft_counts integer[];
UPDATE usage_hourly SET
  latency_buckets = (SELECT coalesce(array_agg((o - 1)::smallint ORDER BY o), '{}') FROM unnest(latency_hist) WITH ORDINALITY t(n, o) WHERE n > 0),
  latency_counts  = (SELECT coalesce(array_agg(n ORDER BY o), '{}') FROM unnest(latency_hist) WITH ORDINALITY t(n, o) WHERE n > 0),
  ttft_buckets    = (SELECT coalesce(array_agg((o - 1)::smallint ORDER BY o), '{}') FROM unnest(ttft_hist) WITH ORDINALITY t(n, o) WHERE n > 0),
  ttft_counts     = (SELECT coalesce(array_agg(n ORDER BY o), '{}') FROM unnest(ttft_hist) WITH ORDINALITY t(n, o) WHERE n > 0);
ALTER TABLE usage_hourly
  ALTER COLUMN latency_buckets SET NOT NULL, ALTER COLUMN latency_counts SET NOT NULL,
  ALTER COLUMN ttft_buckets SET NOT NULL, ALTER COLUMN ttft_counts SET NOT NULL;
DROP VIEW usage_daily;
ALTER TABLE usage_hourly DROP COLUMN latency_hist, DROP COLUMN ttft_hist;
DROP FUNCTION pglog_hist_quantile(integer[], double precision);
DROP AGGREGATE pglog_hist_sum(integer[]);
DROP FUNCTION pglog_hist_add(integer[], integer[]);
DROP FUNCTION pglog_hist(integer[]);

CREATE TABLE usage_daily_rollup (
  day                timestamptz    NOT NULL,  -- UTC midnight
  api_key_hash       varchar(80)    NOT NULL,
  end_user           varchar(255)   NOT NULL,
  model              varchar(255)   NOT NULL,
  status             varchar(32)    NOT NULL,
  calls              bigint         NOT NULL,
  prompt_tokens      bigint         NOT NULL,
  completion_tokens  bigint         NOT NULL,
  total_tokens       bigint         NOT NULL,
  cost_usd           numeric(24,10) NOT NULL,
  latency_ms_sum     double precision NOT NULL,
  latency_buckets    smallint[]     NOT NULL,
  latency_counts     integer[]      NOT NULL,
  ttft_calls         bigint         NOT NULL,
  ttft_buckets       smallint[]     NOT NULL,
  ttft_counts        integer[]      NOT NULL,
  CONSTRAINT pk_usage_daily_rollup PRIMARY KEY (day, api_key_hash, end_user, model, status)
);

-- the geometric middle (ms) of bucket b
CREATE FUNCTION pglog_bucket_ms(b integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT round(power(2.0, (b + 0.5) / 3.0)::numeric, 1)::double precision
$$;

-- the q-quantile of one sparse histogram; NULL when it is empty
CREATE FUNCTION pglog_hist_quantile(buckets smallint[], counts integer[], q double precision)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT pglog_bucket_ms(s.b)
  FROM (SELECT b, sum(n) OVER (ORDER BY b) AS cum, sum(n) OVER () AS total
        FROM unnest(buckets, counts) AS t(b, n)) s
  WHERE s.total > 0 AND s.cum >= q * s.total
  ORDER BY s.b LIMIT 1
$$;

-- usage_daily_rollup from usage_hourly, for the given UTC days
CREATE FUNCTION pglog_rollup_days(days timestamptz[]) RETURNS void
LANGUAGE sql SET TimeZone = 'UTC' AS $$
  DELETE FROM usage_daily_rollup WHERE day = ANY (days);
  WITH src AS (
    SELECT date_trunc('day', u.hour) AS day, u.* FROM unnest(days) AS d(day)
    JOIN usage_hourly u ON u.hour >= d.day AND u.hour < d.day + interval '1 day'),
  tot AS (
    SELECT day, api_key_hash, end_user, model, status, sum(calls) AS calls, sum(prompt_tokens) AS pt,
           sum(completion_tokens) AS ct, sum(total_tokens) AS tt, sum(cost_usd) AS cost,
           sum(latency_ms_sum) AS lsum, sum(ttft_calls) AS tcalls
    FROM src GROUP BY 1, 2, 3, 4, 5),
  lat AS (
    SELECT day, api_key_hash, end_user, model, status, array_agg(b ORDER BY b) AS b, array_agg(n ORDER BY b) AS n
    FROM (SELECT day, api_key_hash, end_user, model, status, t.b, sum(t.n)::integer AS n
          FROM src, unnest(src.latency_buckets, src.latency_counts) AS t(b, n) GROUP BY 1, 2, 3, 4, 5, 6) x
    GROUP BY 1, 2, 3, 4, 5),
  ttf AS (
    SELECT day, api_key_hash, end_user, model, status, array_agg(b ORDER BY b) AS b, array_agg(n ORDER BY b) AS n
    FROM (SELECT day, api_key_hash, end_user, model, status, t.b, sum(t.n)::integer AS n
          FROM src, unnest(src.ttft_buckets, src.ttft_counts) AS t(b, n) GROUP BY 1, 2, 3, 4, 5, 6) x
    GROUP BY 1, 2, 3, 4, 5)
  INSERT INTO usage_daily_rollup
  SELECT tot.day, tot.api_key_hash, tot.end_user, tot.model, tot.status, tot.calls, tot.pt, tot.ct, tot.tt,
         tot.cost, tot.lsum, coalesce(lat.b, '{}'), coalesce(lat.n, '{}'), tot.tcalls,
         coalesce(ttf.b, '{}'), coalesce(ttf.n, '{}')
  FROM tot LEFT JOIN lat USING (day, api_key_hash, end_user, model, status)
           LEFT JOIN ttf USING (day, api_key_hash, end_user, model, status);
$$;
REVOKE ALL ON FUNCTION pglog_rollup_days(timestamptz[]) FROM PUBLIC;

CREATE OR REPLACE FUNCTION pglog_rollup_refresh(lag interval DEFAULT '60 seconds') RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public SET TimeZone = 'UTC' AS $$
DECLARE
  since timestamptz;
  upto  timestamptz := now() - lag;
  hours timestamptz[];
  days  timestamptz[];
BEGIN
  -- one refresher at a time (a second one waits here, then finds nothing to do)
  SELECT logged_through INTO since FROM usage_rollup_state WHERE id FOR UPDATE;
  IF upto <= since THEN
    RETURN 0;
  END IF;
  SELECT coalesce(array_agg(DISTINCT date_trunc('hour', created_at)), '{}') INTO hours
  FROM requests WHERE logged_at > since AND logged_at <= upto;
  DELETE FROM usage_hourly WHERE hour = ANY (hours);
  WITH raw AS MATERIALIZED (
    SELECT h.hour, q.api_key_hash, coalesce(q.end_user, '') AS end_user, q.model, r.status,
           r.prompt_tokens, r.completion_tokens, r.total_tokens,
           CASE WHEN r.cost_usd = 'NaN' THEN 0 ELSE r.cost_usd END AS cost_usd, r.latency_ms,
           pglog_hist_bucket(r.latency_ms)::smallint AS lb, pglog_hist_bucket(r.ttft_ms)::smallint AS tb
    FROM unnest(hours) AS h(hour)  -- one index range scan per hour, in that hour's partitions
    JOIN requests q ON q.created_at >= h.hour AND q.created_at < h.hour + interval '1 hour'
    JOIN responses r ON r.request_id = q.id AND r.request_created_at = q.created_at),
  tot AS (
    SELECT hour, api_key_hash, end_user, model, status, count(*) AS calls, sum(prompt_tokens) AS pt,
           sum(completion_tokens) AS ct, sum(total_tokens) AS tt, sum(cost_usd) AS cost,
           sum(latency_ms) AS lsum, count(tb) AS tcalls
    FROM raw GROUP BY 1, 2, 3, 4, 5),
  lat AS (
    SELECT hour, api_key_hash, end_user, model, status, array_agg(lb ORDER BY lb) AS b, array_agg(n ORDER BY lb) AS n
    FROM (SELECT hour, api_key_hash, end_user, model, status, lb, count(*)::integer AS n
          FROM raw WHERE lb IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6) x
    GROUP BY 1, 2, 3, 4, 5),
  ttf AS (
    SELECT hour, api_key_hash, end_user, model, status, array_agg(tb ORDER BY tb) AS b, array_agg(n ORDER BY tb) AS n
    FROM (SELECT hour, api_key_hash, end_user, model, status, tb, count(*)::integer AS n
          FROM raw WHERE tb IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 6) x
    GROUP BY 1, 2, 3, 4, 5)
  INSERT INTO usage_hourly (hour, api_key_hash, end_user, model, status, calls, prompt_tokens, completion_tokens,
                            total_tokens, cost_usd, latency_ms_sum, ttft_calls, latency_buckets, latency_counts,
                            ttft_buckets, ttft_counts)
  SELECT tot.hour, tot.api_key_hash, tot.end_user, tot.model, tot.status, tot.calls, tot.pt, tot.ct, tot.tt,
         tot.cost, tot.lsum, tot.tcalls, coalesce(lat.b, '{}'), coalesce(lat.n, '{}'),
         coalesce(ttf.b, '{}'), coalesce(ttf.n, '{}')
  FROM tot LEFT JOIN lat USING (hour, api_key_hash, end_user, model, status)
           LEFT JOIN ttf USING (hour, api_key_hash, end_user, model, status);
  SELECT coalesce(array_agg(DISTINCT date_trunc('day', h)), '{}') INTO days FROM unnest(hours) AS t(h);
  PERFORM pglog_rollup_days(days);
  UPDATE usage_rollup_state SET logged_through = upto, refreshed_at = now() WHERE id;
  RETURN cardinality(hours);
END
$$;

CREATE VIEW usage_daily AS
SELECT day, api_key_hash, end_user, model, status, calls, prompt_tokens, completion_tokens, total_tokens, cost_usd,
       round((latency_ms_sum / nullif(calls, 0))::numeric, 1) AS latency_ms_avg,
       pglog_hist_quantile(latency_buckets, latency_counts, 0.5) AS latency_ms_p50,
       pglog_hist_quantile(latency_buckets, latency_counts, 0.95) AS latency_ms_p95,
       pglog_hist_quantile(latency_buckets, latency_counts, 0.99) AS latency_ms_p99,
       ttft_calls,
       pglog_hist_quantile(ttft_buckets, ttft_counts, 0.5) AS ttft_ms_p50,
       pglog_hist_quantile(ttft_buckets, ttft_counts, 0.95) AS ttft_ms_p95
FROM usage_daily_rollup;

-- the days that usage_hourly holds, rolled up once
SELECT pglog_rollup_days(coalesce(array_agg(DISTINCT date_trunc('day', hour, 'UTC')), '{}')) FROM usage_hourly;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


# 0004's dense-histogram functions and view, written out again on purpose: a migration is a frozen
# snapshot and must not change when another revision's file does (0004 keeps its SQL inside upgrade()).
DOWNGRADE = r"""
DROP VIEW usage_daily;
DROP TABLE usage_daily_rollup;
DROP FUNCTION pglog_rollup_days(timestamptz[]);
DROP FUNCTION pglog_hist_quantile(smallint[], integer[], double precision);
DROP FUNCTION pglog_bucket_ms(integer);
-- derived data: emptied, recomputed from the raw rows by the next refresh
TRUNCATE usage_hourly;
UPDATE usage_rollup_state SET logged_through = '-infinity';
ALTER TABLE usage_hourly DROP COLUMN latency_buckets, DROP COLUMN latency_counts, DROP COLUMN ttft_buckets,
  DROP COLUMN ttft_counts, ADD COLUMN latency_hist integer[] NOT NULL, ADD COLUMN ttft_hist integer[] NOT NULL;
CREATE FUNCTION pglog_hist(buckets integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT array_agg(coalesce(c.n, 0)::int ORDER BY i)
  FROM generate_series(0, 63) AS i
  LEFT JOIN (SELECT b, count(*) AS n FROM unnest(buckets) AS b WHERE b IS NOT NULL GROUP BY b) c ON c.b = i
$$;
CREATE FUNCTION pglog_hist_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a ELSE
    (SELECT array_agg(x + y ORDER BY o) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, o)) END
$$;
CREATE AGGREGATE pglog_hist_sum(integer[]) (SFUNC = pglog_hist_add, STYPE = integer[]);
CREATE FUNCTION pglog_hist_quantile(h integer[], q double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT round(power(2.0, (s.o - 0.5) / 3.0)::numeric, 1)::double precision
  FROM (SELECT o, sum(n) OVER (ORDER BY o) AS cum, sum(n) OVER () AS total
        FROM unnest(h) WITH ORDINALITY AS t(n, o)) s
  WHERE s.total > 0 AND s.cum >= q * s.total
  ORDER BY s.o LIMIT 1
$$;
CREATE VIEW usage_daily AS
SELECT date_trunc('day', hour, 'UTC') AS day, api_key_hash, end_user, model, status,
       sum(calls) AS calls, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
       sum(total_tokens) AS total_tokens, sum(cost_usd) AS cost_usd,
       round((sum(latency_ms_sum) / nullif(sum(calls), 0))::numeric, 1) AS latency_ms_avg,
       pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.5) AS latency_ms_p50,
       pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.95) AS latency_ms_p95,
       pglog_hist_quantile(pglog_hist_sum(latency_hist), 0.99) AS latency_ms_p99,
       sum(ttft_calls) AS ttft_calls,
       pglog_hist_quantile(pglog_hist_sum(ttft_hist), 0.5) AS ttft_ms_p50,
       pglog_hist_quantile(pglog_hist_sum(ttft_hist), 0.95) AS ttft_ms_p95
FROM usage_hourly
GROUP BY 1, 2, 3, 4, 5;
"""


def downgrade() -> None:
    # The rollup is derived data: the dense form comes back empty and the next refresh
    # recomputes it from the raw rows (0005's refresh function, restored here).
    import importlib

    op.execute(DOWNGRADE)
    op.execute(importlib.import_module("litellm_pglog.migrations.versions.0005_partitioned_log_tables").ROLLUP_REFRESH)
