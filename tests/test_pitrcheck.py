"""molecule/shared/pitrcheck.py, the restore drills' judge, on a real PostgreSQL: two databases
stand for the live cluster and the restored copy. A judge that cannot see a missing row, an
extra row or a pair the restore split would pass any restore."""

from __future__ import annotations

import pytest

import pitrcheck
from pgcluster import new_cluster

SCHEMA = """
CREATE TABLE requests (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, tags jsonb NOT NULL DEFAULT '[]');
CREATE TABLE responses (id bigint PRIMARY KEY, request_id bigint NOT NULL, created_at timestamptz NOT NULL);
"""
TAG = "drill-pitr-test"


def _fill(conn, pairs: range, extra_requests: tuple[int, ...] = ()) -> None:  # noqa: ANN001
    cur = conn.cursor()
    for i in pairs:
        cur.execute("INSERT INTO requests VALUES (%s, now() - interval '1 hour', jsonb_build_array(%s))",
                    (i, f"run:{TAG}"))
        cur.execute("INSERT INTO responses VALUES (%s, %s, now() - interval '1 hour')", (i, i))
    for i in extra_requests:
        cur.execute("INSERT INTO requests VALUES (%s, now() - interval '1 hour')", (i,))


@pytest.fixture(scope="module")
def cluster():
    """A cluster of this module's own: commit timestamps on, as on the database hosts."""
    c = new_cluster()
    with c.admin() as conn:
        conn.cursor().execute("ALTER SYSTEM SET track_commit_timestamp = on")
    c.stop()
    c.start()
    yield c
    c.destroy()


@pytest.fixture
def dbs(cluster):
    names = ("pitr_live", "pitr_copy")
    for name in names:
        cluster.drop_db(name)
        cluster.create_db(name)
        with cluster.admin(name) as conn:
            conn.cursor().execute(SCHEMA)
    yield {name: (lambda sql, n=name: _query(cluster, n, sql)) for name in names}, cluster
    for name in names:
        cluster.drop_db(name)


def _query(cluster, db: str, sql: str) -> list[list[str]]:  # noqa: ANN001
    with cluster.admin(db) as conn:
        cur = conn.cursor()
        cur.execute(sql)
        return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]


def _judge(dbs, target: str = "") -> dict:  # noqa: ANN001
    q, _ = dbs
    target = target or q["pitr_live"]("SELECT clock_timestamp()::text")[0][0]
    return pitrcheck.compare_to_time(q["pitr_live"], q["pitr_copy"], target, TAG)


def test_an_exact_copy_passes(dbs):
    q, cluster = dbs
    with cluster.admin("pitr_live") as live, cluster.admin("pitr_copy") as copy:
        _fill(live, range(1, 21))
        _fill(copy, range(1, 21))
    f = _judge(dbs)
    assert f["live"] == f["restored"] and f["orphans"] == 0 and f["run_rows"] == 20, f
    # nothing committed after T here: the judge says the restore proves nothing
    assert pitrcheck.problems(f) == ["nothing committed after T on the live cluster (the restore proves nothing)"]


def test_a_missing_row_an_extra_row_and_a_split_pair_are_each_seen(dbs):
    q, cluster = dbs
    with cluster.admin("pitr_live") as live, cluster.admin("pitr_copy") as copy:
        _fill(live, range(1, 21))
        _fill(copy, range(1, 20))  # request/response 20 missing from the copy
    f = _judge(dbs)
    assert any(p.startswith("requests committed <= T") for p in pitrcheck.problems(f)), f
    assert any(p.startswith("responses committed <= T") for p in pitrcheck.problems(f)), f

    with cluster.admin("pitr_copy") as copy:
        copy.cursor().execute("INSERT INTO requests VALUES (20, now() - interval '1 hour', '[]')")  # its response not
    f = _judge(dbs)
    assert f["orphans"] == 1 and f["orphans_also_live"] == 0, f
    assert "1 pairs split by the restore" in pitrcheck.problems(f)

    with cluster.admin("pitr_copy") as copy:
        copy.cursor().execute("INSERT INTO responses VALUES (20, 20, now() - interval '1 hour')")
        copy.cursor().execute("INSERT INTO requests VALUES (99, now() - interval '1 hour', '[]')")  # never live
    f = _judge(dbs)
    assert f["restored"]["requests"][0] == "21" and f["live"]["requests"][0] == "20", f
    assert any(p.startswith("requests committed <= T") for p in pitrcheck.problems(f)), f


def test_an_orphan_the_live_cluster_has_too_is_not_the_restores(dbs):
    q, cluster = dbs
    with cluster.admin("pitr_live") as live, cluster.admin("pitr_copy") as copy:
        _fill(live, range(1, 6), extra_requests=(7,))
        _fill(copy, range(1, 6), extra_requests=(7,))
    f = _judge(dbs)
    assert f["orphans"] == 0 and f["orphans_also_live"] == 1, f


def test_rows_after_t_on_the_live_cluster_are_counted_and_not_expected(dbs):
    q, cluster = dbs
    with cluster.admin("pitr_live") as live, cluster.admin("pitr_copy") as copy:
        _fill(live, range(1, 11))
        _fill(copy, range(1, 11))
    T = q["pitr_live"]("SELECT now()::text")[0][0]
    with cluster.admin("pitr_live") as live:
        live.cursor().execute("INSERT INTO requests VALUES (11, now() + interval '1 hour', '[]')")
        live.cursor().execute("INSERT INTO responses VALUES (11, 11, now() + interval '1 hour')")
    f = _judge(dbs, T)
    assert f["later"] == 1 and not pitrcheck.problems(f), f
    assert f["live"]["requests"][0] == "10" and f["restored"]["requests"][0] == "10", f

    # the copy holding the row committed after T is a restore past T
    with cluster.admin("pitr_copy") as copy:
        copy.cursor().execute("INSERT INTO requests VALUES (11, now() + interval '1 hour', '[]')")
        copy.cursor().execute("INSERT INTO responses VALUES (11, 11, now() + interval '1 hour')")
    assert pitrcheck.problems(_judge(dbs, T)), "a copy with a row committed after T passed"
