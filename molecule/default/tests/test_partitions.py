"""The log tables on the bed: daily partitions managed by pg_partman 5 (days made ahead,
days past retention dropped whole, request and response of a call together), every
responses day tied to its requests day, and the two upkeep timers.

Issue 14 items 1 and 3. The retention test makes a day older than the retention window
(pg_partman's own function, as the owner role), fills it, runs the real maintenance unit and
finds the day gone from both tables while the days ahead are still there."""

import shlex

import pytest

from bedlib import hosts_in, inventory_vars, podman_hosts_in

testinfra_hosts = podman_hosts_in("postgresql")  # podman exec: ~0.1 s a command, not ~5 s

PARENTS = ("requests", "responses")


@pytest.fixture(scope="module")
def log_vars():
    v = inventory_vars(hosts_in("postgresql")[0])
    return {
        "db": v.get("pglog_db_name", "litellm_db"),
        "owner": v.get("pglog_owner_role", "litellm_owner"),
        "retention": int(v.get("postgresql_log_retention_days", 90)),
        "premake": int(v.get("postgresql_log_partition_premake", 4)),
    }


def psql(host, db, sql, role=None):
    """SQL as postgres over the local socket (peer), as `role` if given; unaligned output."""
    if role:
        sql = f'SET ROLE "{role}"; SET TimeZone = \'UTC\'; {sql}'
    result = host.run(f"runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -At -F '|' -d {db} -c {shlex.quote(sql)}")
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def children(host, db, parent):
    out = psql(host, db, f"SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                         f" WHERE i.inhparent = 'public.{parent}'::regclass ORDER BY 1")
    return out.splitlines()


def test_log_tables_are_handed_to_pg_partman(host, log_vars):
    rows = psql(host, log_vars["db"],
                "SELECT parent_table, control, partition_interval, premake, retention, retention_keep_table,"
                " infinite_time_partitions, maintenance_order FROM partman.part_config ORDER BY maintenance_order")
    assert rows.splitlines() == [
        f"public.responses|request_created_at|1 day|{log_vars['premake']}|{log_vars['retention']} days|f|t|1",
        f"public.requests|created_at|1 day|{log_vars['premake']}|{log_vars['retention']} days|f|t|2",
    ]


def test_days_ahead_exist_and_every_responses_day_points_at_its_requests_day(host, log_vars):
    db = log_vars["db"]
    ahead = psql(host, db, f"SELECT string_agg(to_char(d, '\"p\"YYYYMMDD'), ' ') FROM generate_series("
                           f"(now() AT TIME ZONE 'UTC')::date, (now() AT TIME ZONE 'UTC')::date"
                           f" + {log_vars['premake']}, interval '1 day') d").split()
    for parent in PARENTS:
        names = set(children(host, db, parent))
        assert {f"{parent}_{day}" for day in ahead} <= names, (parent, sorted(names))
        assert f"{parent}_default" in names
    links = psql(host, db, "SELECT c.relname || '>' || f.relname || '>' || k.confdeltype::text FROM pg_constraint k"
                           " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class f ON f.oid = k.confrelid"
                           " WHERE k.contype = 'f' AND c.relname LIKE 'responses%' AND k.conparentid = 0"
                           " ORDER BY 1").splitlines()
    expected = [f"{c}>requests{c[len('responses'):]}>c" for c in children(host, db, "responses")]
    assert links == expected
    owners = psql(host, db, "SELECT DISTINCT pg_get_userbyid(c.relowner) FROM pg_inherits i"
                            " JOIN pg_class c ON c.oid = i.inhrelid"
                            " WHERE i.inhparent IN ('public.requests'::regclass, 'public.responses'::regclass)")
    assert owners.splitlines() == [log_vars["owner"]]  # the owner can still migrate every partition


def test_upkeep_timers_are_enabled_and_their_runs_succeed(host):
    for unit in ("pglog-partitions", "pglog-rollup"):
        timer = host.service(f"{unit}.timer")
        assert timer.is_enabled and timer.is_running, unit
        run = host.run(f"systemctl start {unit}.service")
        assert run.rc == 0, host.run(f"journalctl -u {unit} -n 20 --no-pager").stdout


def test_retention_drops_days_past_the_window_whole_and_keeps_the_days_ahead(host, log_vars):
    db, owner, retention = log_vars["db"], log_vars["owner"], log_vars["retention"]
    day = f"date_trunc('day', now() - interval '{retention + 5} days')"
    suffix = psql(host, db, f"SELECT to_char({day}, 'YYYYMMDD')", role=owner)
    old = {f"{parent}_p{suffix}" for parent in PARENTS}
    try:
        psql(host, db, f"SELECT partman.create_partition_time('public.responses', ARRAY[{day}]);"
                        f" SELECT partman.create_partition_time('public.requests', ARRAY[{day}]);"
                        " SELECT pglog_partition_link()", role=owner)
        psql(host, db, "WITH q AS (INSERT INTO requests (call_id, created_at, model, call_type, stream,"
                       " api_key_hash, tags, payload, event_id)"
                       f" SELECT 'retention-drill-' || i, {day} + i * interval '1 second', 'm', 'acompletion',"
                       " false, '', '[]', '{}', gen_random_uuid() FROM generate_series(0, 999) i"
                       " RETURNING id, created_at)"
                       " INSERT INTO responses (request_id, request_created_at, created_at, status, prompt_tokens,"
                       " completion_tokens, total_tokens, cost_usd, latency_ms, body)"
                       " SELECT id, created_at, created_at, 'success', 1, 1, 2, 0, 1, '{}' FROM q", role=owner)
        before = set(children(host, db, "requests")) | set(children(host, db, "responses"))
        assert old <= before
        assert psql(host, db, "SELECT count(*) FROM requests WHERE call_id LIKE 'retention-drill-%'") == "1000"
        run = host.run("systemctl start pglog-partitions.service")
        assert run.rc == 0, host.run("journalctl -u pglog-partitions -n 20 --no-pager").stdout
        after = set(children(host, db, "requests")) | set(children(host, db, "responses"))
        assert not old & after, sorted(old & after)
        assert before - after == old  # only the day past retention went; the days ahead are there
        assert psql(host, db, "SELECT count(*) FROM requests WHERE call_id LIKE 'retention-drill-%'") == "0"
        assert psql(host, db, "SELECT count(*) FROM responses r LEFT JOIN requests q ON q.id = r.request_id"
                              " AND q.created_at = r.request_created_at WHERE q.id IS NULL") == "0"
    finally:
        for name in sorted(old, reverse=True):  # responses first: it points at requests
            psql(host, db, f"DROP TABLE IF EXISTS public.{name}", role=owner)
