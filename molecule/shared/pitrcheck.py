"""What a point-in-time restore to T must hold, compared with the live cluster: shared by the
restore drills of the one-host bed (molecule/resilience) and of the Patroni cluster (molecule/ha).

Why "committed at or before T", not "created_at <= T" (the issue's words): recovery to a time
replays every transaction whose COMMIT is at or before T and nothing else. The logger writes
batches (flush interval, retries, spool replay) and created_at is the event's own time (request
start), so a row created before T may commit after T: it is rightly absent from the restore. The
comparison takes the live rows whose transaction committed at or before T
(pg_xact_commit_timestamp(xmin), track_commit_timestamp = on; NULL = committed before the setting
existed, i.e. long before T) and ALL rows of the restore, and counts the live rows created before T
but committed after it (`straddling`). The rows with created_at <= T of the restore must then be
those of the live rows committed by T, which is checked too.

`live` and `restored` run one SQL statement on the live primary and on the restored copy and
return its rows as lists of strings (each bed has its own way into its containers).
"""

from __future__ import annotations

from typing import Callable

Query = Callable[[str], list[list[str]]]

TABLES = ("requests", "responses")
IDS = ("SELECT count(*), md5(coalesce(string_agg(id::text, ',' ORDER BY id), ''))"
       " FROM {table} WHERE {where}")
COMMITTED_BY = "coalesce(pg_xact_commit_timestamp(xmin), '-infinity') <= {t}"


def compare_to_time(live: Query, restored: Query, target: str, run_tag: str) -> dict:
    """The figures of a restore to `target` (a timestamptz literal's text): per table the
    (count, md5 of ids) of the live rows committed by T and of every restored row, the same for
    created_at <= T, straddling and later rows, the run's rows restored, and the orphans the
    restore made (a pair whole on the live cluster, split in the copy) apart from those the
    live cluster has too (made before T on purpose, e.g. by a validate honesty test)."""
    t = f"'{target}'::timestamptz"
    committed = COMMITTED_BY.format(t=t)
    out: dict = {"live": {}, "restored": {}, "created_live": {}, "created_restored": {}}
    for table in TABLES:
        out["live"][table] = live(IDS.format(table=table, where=committed))[0]
        out["restored"][table] = restored(IDS.format(table=table, where="true"))[0]
        out["created_live"][table] = live(IDS.format(table=table, where=f"created_at <= {t} AND {committed}"))[0]
        out["created_restored"][table] = restored(IDS.format(table=table, where=f"created_at <= {t}"))[0]
    out["straddling"] = int(live(f"SELECT count(*) FROM requests WHERE created_at <= {t} AND NOT {committed}")[0][0])
    out["later"] = int(live(f"SELECT count(*) FROM requests WHERE NOT {committed}")[0][0])
    assert all(ch.isalnum() or ch in "-_:" for ch in run_tag), run_tag
    out["run_rows"] = int(restored(f"SELECT count(*) FROM requests WHERE tags @> jsonb_build_array('run:{run_tag}')")[0][0])
    split, preexisting = 0, 0
    for table, other, key, other_key in (("requests", "responses", "id", "request_id"),
                                         ("responses", "requests", "request_id", "id")):
        ids = [r[0] for r in restored(f"SELECT a.{key} FROM {table} a WHERE NOT EXISTS (SELECT 1 FROM {other} b"
                                      f" WHERE b.{other_key} = a.{key})") if r and r[0]]
        if ids:
            also_live = int(live(f"SELECT count(*) FROM {table} a WHERE a.{key} = ANY(ARRAY[{','.join(ids)}]::bigint[])"
                                 f" AND NOT EXISTS (SELECT 1 FROM {other} b WHERE b.{other_key} = a.{key})")[0][0])
            preexisting += also_live
            split += len(ids) - also_live
    out["orphans"], out["orphans_also_live"] = split, preexisting
    return out


def problems(f: dict) -> list[str]:
    """What makes a restore to T wrong (empty: right), from compare_to_time's figures."""
    found = []
    for table in TABLES:
        if f["live"][table] != f["restored"][table]:
            found.append(f"{table} committed <= T on the live cluster {f['live'][table]} != restored {f['restored'][table]}")
        if f["created_live"][table] != f["created_restored"][table]:
            found.append(f"{table} created_at <= T differ: live {f['created_live'][table]},"
                         f" restored {f['created_restored'][table]}")
    if f["orphans"]:
        found.append(f"{f['orphans']} pairs split by the restore")
    if f["run_rows"] <= 0:
        found.append("no row of this run before T restored (T too early?)")
    if f["later"] <= 0:
        found.append("nothing committed after T on the live cluster (the restore proves nothing)")
    return found


def summary(f: dict) -> dict:
    """The figures for a drill's JSON line."""
    return {"requests_committed_le_T": {"live": f["live"]["requests"], "restored": f["restored"]["requests"]},
            "responses_committed_le_T": {"live": f["live"]["responses"], "restored": f["restored"]["responses"]},
            "requests_created_le_T": int(f["created_restored"]["requests"][0]),
            "straddling": f["straddling"], "live_rows_committed_after_T": f["later"],
            "run_rows_restored": f["run_rows"], "orphans": f["orphans"],
            "orphans_also_on_the_live_cluster": f["orphans_also_live"]}
