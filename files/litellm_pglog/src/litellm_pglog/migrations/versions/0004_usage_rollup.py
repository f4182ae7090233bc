"""usage_hourly: an hourly usage rollup maintained incrementally, so reports never scan raw logs

- usage_hourly: one row per (hour of the request, api_key_hash, end_user, model, status):
  calls, tokens, cost, the latency sum and two latency histograms (whole call, first token)
  with 64 logarithmic buckets, three per doubling: bucket i holds [2^(i/3), 2^((i+1)/3)) ms
  (bucket 0 everything below 2^(1/3) ms, bucket 63 everything from 2^21 ms, ~35 min). Histograms
  add up, so any coarser grouping (a day, a key over a month) has its percentiles too, within
  the bucket width (+-12 % around the geometric middle the quantile function returns).
- usage_rollup_state: how far (requests.logged_at) the rollup has read.
- pglog_rollup_refresh(lag): recomputes exactly the hours that received rows logged since the
  last refresh and up to now() - lag (default 60 s, above the writer's 30 s statement timeout:
  a row whose transaction began before that point has committed by then), from raw rows of
  those hours only (index ix_requests_logged_at finds them; ix_requests_created_at reads the
  hours). Rows that arrive late for an old hour (a spool replay after an outage) re-open that
  hour: nothing is counted twice, nothing is lost. SECURITY DEFINER (runs as the owner), so the
  writer may refresh the rollup without any right to change it; EXECUTE revoked from PUBLIC.
- pglog_hist_add / pglog_hist_sum (aggregate) / pglog_hist_quantile: histogram arithmetic.
- usage_daily: a view for BI tools (per UTC day, key hash, end user, model, status; p50/p95/p99).
  Hours are UTC hours (the refresh runs with TimeZone UTC).
- ix_requests_logged_at: the refresh's index (built in the migration's transaction: writes to
  requests wait while it builds, ~1-2 s per million rows).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

BUCKETS = 64
PER_DOUBLING = 3


def upgrade() -> None:
    op.create_index("ix_requests_logged_at", "requests", ["logged_at"])
    op.execute(f"""
CREATE TABLE usage_hourly (
  hour               timestamptz    NOT NULL,
  api_key_hash       varchar(80)    NOT NULL,
  end_user           varchar(255)   NOT NULL,  -- '' when the call named none
  model              varchar(255)   NOT NULL,
  status             varchar(32)    NOT NULL,
  calls              bigint         NOT NULL,
  prompt_tokens      bigint         NOT NULL,
  completion_tokens  bigint         NOT NULL,
  total_tokens       bigint         NOT NULL,
  cost_usd           numeric(24,10) NOT NULL,
  latency_ms_sum     double precision NOT NULL,
  latency_hist       integer[]      NOT NULL,
  ttft_calls         bigint         NOT NULL,
  ttft_hist          integer[]      NOT NULL,
  CONSTRAINT pk_usage_hourly PRIMARY KEY (hour, api_key_hash, end_user, model, status)
);
CREATE TABLE usage_rollup_state (
  id              boolean PRIMARY KEY DEFAULT true CHECK (id),
  logged_through  timestamptz NOT NULL,
  refreshed_at    timestamptz NOT NULL
);
INSERT INTO usage_rollup_state VALUES (true, '-infinity', now());

CREATE FUNCTION pglog_hist_bucket(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN ms IS NULL OR ms = 'NaN' THEN NULL
              ELSE least({BUCKETS - 1}.0, greatest(0.0, floor({PER_DOUBLING} * ln(greatest(ms, 1.0)) / ln(2.0))))::int END
$$;

CREATE FUNCTION pglog_hist(buckets integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT array_agg(coalesce(c.n, 0)::int ORDER BY i)
  FROM generate_series(0, {BUCKETS - 1}) AS i
  LEFT JOIN (SELECT b, count(*) AS n FROM unnest(buckets) AS b WHERE b IS NOT NULL GROUP BY b) c ON c.b = i
$$;

CREATE FUNCTION pglog_hist_add(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE WHEN a IS NULL THEN b WHEN b IS NULL THEN a ELSE
    (SELECT array_agg(x + y ORDER BY o) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, o)) END
$$;

CREATE AGGREGATE pglog_hist_sum(integer[]) (SFUNC = pglog_hist_add, STYPE = integer[]);

-- the geometric middle of the bucket holding the q-quantile; NULL for an empty histogram
CREATE FUNCTION pglog_hist_quantile(h integer[], q double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT round(power(2.0, (s.o - 0.5) / {PER_DOUBLING}.0)::numeric, 1)::double precision
  FROM (SELECT o, sum(n) OVER (ORDER BY o) AS cum, sum(n) OVER () AS total
        FROM unnest(h) WITH ORDINALITY AS t(n, o)) s
  WHERE s.total > 0 AND s.cum >= q * s.total
  ORDER BY s.o LIMIT 1
$$;

CREATE FUNCTION pglog_rollup_refresh(lag interval DEFAULT '60 seconds') RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public SET TimeZone = 'UTC' AS $$
DECLARE
  since timestamptz;
  upto  timestamptz := now() - lag;
  hours timestamptz[];
BEGIN
  -- one refresher at a time (a second one waits here, then finds nothing to do)
  SELECT logged_through INTO since FROM usage_rollup_state WHERE id FOR UPDATE;
  IF upto <= since THEN
    RETURN 0;
  END IF;
  SELECT coalesce(array_agg(DISTINCT date_trunc('hour', created_at)), '{{}}') INTO hours
  FROM requests WHERE logged_at > since AND logged_at <= upto;
  DELETE FROM usage_hourly WHERE hour = ANY (hours);
  INSERT INTO usage_hourly
  SELECT h.hour, q.api_key_hash, coalesce(q.end_user, ''), q.model, r.status,
         count(*), sum(r.prompt_tokens), sum(r.completion_tokens), sum(r.total_tokens),
         sum(CASE WHEN r.cost_usd = 'NaN' THEN 0 ELSE r.cost_usd END), sum(r.latency_ms),
         pglog_hist(array_agg(pglog_hist_bucket(r.latency_ms))),
         count(r.ttft_ms), pglog_hist(array_agg(pglog_hist_bucket(r.ttft_ms)))
  FROM unnest(hours) AS h(hour)  -- one index range scan of requests per hour
  JOIN requests q ON q.created_at >= h.hour AND q.created_at < h.hour + interval '1 hour'
  JOIN responses r ON r.request_id = q.id
  GROUP BY 1, 2, 3, 4, 5;
  UPDATE usage_rollup_state SET logged_through = upto, refreshed_at = now() WHERE id;
  RETURN cardinality(hours);
END
$$;
REVOKE ALL ON FUNCTION pglog_rollup_refresh(interval) FROM PUBLIC;

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
""")


def downgrade() -> None:
    op.execute("""
DROP VIEW usage_daily;
DROP FUNCTION pglog_rollup_refresh(interval);
DROP FUNCTION pglog_hist_quantile(integer[], double precision);
DROP AGGREGATE pglog_hist_sum(integer[]);
DROP FUNCTION pglog_hist_add(integer[], integer[]);
DROP FUNCTION pglog_hist(integer[]);
DROP FUNCTION pglog_hist_bucket(double precision);
DROP TABLE usage_rollup_state;
DROP TABLE usage_hourly;
""")
    op.drop_index("ix_requests_logged_at", "requests")
