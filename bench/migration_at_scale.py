"""Migration 0005 (plain tables -> daily partitions) on a populated database, and what it costs
the tables' users while it runs.

N request/response pairs (default 1,000,000; ~1 KB payloads over 30 days, made in SQL) are
written at revision 0004, then `migrate` goes to head, timed. Meanwhile two probes, each on its
own connection, ask every 20 ms: a reader (one row by id) and a writer (one request row). What
each waited longest is the migration's lock seen from outside: EXCLUSIVE on the old tables for
the copy (readers go on, inserts wait), ACCESS EXCLUSIVE for the swap at the end.

Usage: .venv-dev/bin/python bench/migration_at_scale.py [pairs]. Prints JSON. Run it alone."""

import json
import random
import sys
import threading
import time

import psycopg2
from _rig import load_avg

from pgcluster import OWNER, OWNER_PW, WRITER, new_cluster  # noqa: E402  (_rig put tests/ on the path)
from litellm_pglog.config import Settings
from litellm_pglog.engine import make_engine
from litellm_pglog.schema import alembic_config, migrate
from sqlalchemy import text

FILL = """
INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash, end_user, tags, payload, event_id)
SELECT 'call-' || i, now() - (i * 30 * 86400.0 / :n) * interval '1 second',
       (ARRAY['gpt-4o', 'gpt-4o-mini', 'claude-sonnet', 'llama-70b'])[1 + i % 4], 'acompletion', i % 5 = 0,
       'h1:' || md5((i % 50)::text), 'user-' || (i % 500), '["team:bench"]',
       jsonb_build_object('messages', jsonb_build_array(jsonb_build_object('role', 'user',
                          'content', repeat(md5(i::text), 28)))), gen_random_uuid()
FROM generate_series(:lo, :hi) i
"""
FILL_RESPONSES = """
INSERT INTO responses (request_id, created_at, status, prompt_tokens, completion_tokens, total_tokens, cost_usd,
                       latency_ms, ttft_ms, body)
SELECT id, created_at + interval '800 ms', CASE WHEN id % 20 = 0 THEN 'failure' ELSE 'success' END,
       120, 240, 360, 0.0012, 700 + id % 900, CASE WHEN stream THEN 150 + id % 100 END,
       '{"choices": [{"message": {"role": "assistant", "content": "ok"}}]}'
FROM requests WHERE id BETWEEN :lo AND :hi
"""


def tune(cluster):
    """The test cluster is made small (64 MB shared_buffers); a database of millions of rows gets
    the memory a production host would give it (the production inventory: 1 GB on 4 GB)."""
    with cluster.admin() as conn:
        cur = conn.cursor()
        cur.execute("ALTER SYSTEM SET shared_buffers = '512MB'")
        cur.execute("ALTER SYSTEM SET maintenance_work_mem = '256MB'")
        cur.execute("ALTER SYSTEM SET work_mem = '16MB'")
        cur.execute("ALTER SYSTEM SET max_wal_size = '4GB'")
    cluster.stop()
    cluster.start()


class Probe(threading.Thread):
    """One statement every 20 ms on its own connection; keeps (start, seconds, error)."""

    def __init__(self, cluster, sql, params):
        super().__init__(daemon=True)
        self.conn = psycopg2.connect(host=cluster.sock, port=cluster.port, user="postgres", dbname="mig")
        self.conn.autocommit = True
        self.sql, self.params, self.samples, self.stop = sql, params, [], threading.Event()

    def run(self):
        cur = self.conn.cursor()
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                cur.execute(self.sql, self.params())
                err = None
            except psycopg2.Error as exc:
                err = exc.__class__.__name__
            self.samples.append((t0, time.monotonic() - t0, err))
            time.sleep(0.02)
        self.conn.close()


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000):
    from alembic import command

    cluster = new_cluster()
    try:
        tune(cluster)
        cluster.create_db("mig")
        engine = make_engine(Settings.from_env(cluster.env(OWNER, OWNER_PW, "mig")), log_connect=False)
        t = time.monotonic()
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0004")
        step = 250_000
        for lo in range(1, n + 1, step):
            with engine.begin() as conn:
                conn.execute(text(FILL), {"lo": lo, "hi": min(n, lo + step - 1), "n": n})
                conn.execute(text(FILL_RESPONSES), {"lo": lo, "hi": min(n, lo + step - 1)})
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
            before = conn.execute(text("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM responses),"
                                       " pg_total_relation_size('requests') + pg_total_relation_size('responses')")).one()
        fill_s = time.monotonic() - t
        load0 = load_avg()
        reader = Probe(cluster, "SELECT call_id FROM requests WHERE id = %s", lambda: (random.randint(1, n),))
        writer = Probe(cluster, "INSERT INTO requests (call_id, created_at, model, call_type, stream, api_key_hash,"
                                " tags, payload, event_id) VALUES ('probe', now(), 'm', 'acompletion', false, '',"
                                " '[]', '{}', gen_random_uuid())", lambda: ())
        reader.start()
        writer.start()
        time.sleep(1.0)
        t0 = time.monotonic()
        result = migrate(engine, WRITER)
        t1 = time.monotonic()
        time.sleep(1.0)
        for p in (reader, writer):
            p.stop.set()
            p.join()
        with engine.connect() as conn:
            after = conn.execute(text("SELECT (SELECT count(*) FROM requests WHERE call_id <> 'probe'),"
                                      " (SELECT count(*) FROM responses),"
                                      " (SELECT count(*) FROM requests WHERE call_id = 'probe'),"
                                      " (SELECT count(*) FROM pg_inherits WHERE inhparent = 'requests'::regclass)")).one()
            version = conn.execute(text("SHOW server_version")).scalar()
        engine.dispose()

        def waited(p):
            during = [s for s in p.samples if s[0] + s[1] >= t0 and s[0] <= t1]
            return {"probes": len(p.samples), "during_migration": len(during),
                    "max_wait_s": round(max((s[1] for s in during), default=0.0), 3),
                    "errors": sorted({s[2] for s in p.samples if s[2]})}

        print(json.dumps({
            "bench": "migration_at_scale", "pairs": n, "postgresql": version,
            "load_avg_start": load0, "load_avg_end": load_avg(),
            "fill_s": round(fill_s, 1), "tables_mb_before": round(before[2] / 2**20),
            "migrate_s": round(t1 - t0, 2), "revision": result["revision"],
            "rows_kept": {"requests": [before[0], after[0]], "responses": [before[1], after[1]]},
            "partitions_of_requests": after[3], "probe_rows_written": after[2],
            "reader": waited(reader), "writer": waited(writer),
            "locks": {"copy": "EXCLUSIVE on requests, responses (SELECT goes on; INSERT waits)",
                      "swap": "ACCESS EXCLUSIVE on the old tables for the drop + rename at the end"},
        }))
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
