"""Restore drills (issue 13): point-in-time recovery with pgBackRest, under logging load.

They run after the fault drills of test_drills.py (file order) on the same bed, with its load
generator and helpers, and print ONE JSON line each (also appended to $PGLOG_LAB_DIR/drills.jsonl):

  8 pitr        note T, keep logging, `playbooks/restore.yml` to T into a scratch cluster
                (17/restore, port 5433, on the db host); the restored rows equal the live rows
                committed at or before T (count and md5 of the ids, both tables), 0 orphans
                made by the restore (a pair whole on the live cluster, split in the copy).
  9 host_lost   (only with PGLOG_DRILL_HOST_LOST=1: ~10 min) `podman rm -f` of the db container under load, a fresh container with the same
                name and address, `playbooks/restore.yml` into place (latest); every row committed
                more than archive_timeout before the loss is back; the gap is measured.

What "the rows of T" means, and the comparison itself: molecule/shared/pitrcheck.py (shared with
the Patroni cluster's drill in molecule/ha).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml

import bedlib
import pitrcheck
from bedlib import ADDRESSES, BED, LAB_DIR, PG_UNIT, hosts_in, inventory_vars, lab_secrets, run_playbook
from test_drills import KEY_FILE, LOADGEN, STOP_FILE, Load, port, run_tag, settle, sh, wait_for

OUT = LAB_DIR / "drills.jsonl"
DB = hosts_in("postgresql")[0]
GW = hosts_in("litellm_gateway")[0]
REPO = hosts_in("pgbackrest_repo")[0]
DB_NAME = inventory_vars(DB).get("pglog_db_name", "litellm_db")
PGB = bedlib.role_defaults("pgbackrest")
SCRATCH_PORT = int(PGB["pgbackrest_restore_scratch_port"])
SCRATCH = PGB["pgbackrest_restore_scratch_cluster"]
PG_VERSION = str(bedlib.role_defaults("postgresql")["postgresql_version"])
ARCHIVE_TIMEOUT = int(inventory_vars(DB).get("pgbackrest_archive_timeout", PGB["pgbackrest_archive_timeout"]))
RATE = float(os.environ.get("PGLOG_DRILL_RATE", "4"))
# Drill 9 builds a fresh database host (container, prepare, the database tier's roles,
# restore): ~8-10 min on this 2-core machine, over the share of `make test` the backup
# tier has (+5 min). It runs on request: PGLOG_DRILL_HOST_LOST=1 molecule verify -s resilience.
HOST_LOST = os.environ.get("PGLOG_DRILL_HOST_LOST", "") == "1"

def q(sql: str, port_: int = 5432, db: str = DB_NAME, container: str = DB, timeout: float = 120) -> list[list[str]]:
    p = sh(container, f"runuser -u postgres -- psql -p {port_} -d {shlex.quote(db)} -XAt -F '|'"
                      f" -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}", timeout=timeout)
    return [line.split("|") for line in p.stdout.splitlines() if line]


def record(drill: int, name: str, **figures: object) -> dict:
    line = {"drill": drill, "name": name, **figures,
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    text = json.dumps(line)
    print("\nDRILL " + text)
    with OUT.open("a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return line


def archived_wal() -> str:
    return q("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")[0][0]


@pytest.fixture(scope="module", autouse=True)
def restore_bed():
    """The load generator and the gateway key on the db host (for drill 8) and on the gateway
    host (drill 9 destroys the db host); the key via stdin, never on a command line."""
    key = lab_secrets()["litellm_master_key"]
    for host in (DB, GW):
        sh(host, f"mkdir -p {os.path.dirname(LOADGEN)}")
        subprocess.run(["podman", "cp", str(Path(bedlib.__file__).with_name("loadgen.py")), f"{host}:{LOADGEN}"],
                       check=True, timeout=60)
        subprocess.run(["podman", "exec", "-i", host, "sh", "-c", f"umask 077; cat > {KEY_FILE}"],
                       input=key, text=True, check=True, timeout=60)
    yield
    for host in (DB, GW):
        subprocess.run(["podman", "exec", host, "rm", "-f", KEY_FILE, STOP_FILE], check=False, timeout=60,
                       capture_output=True)


# --- the play's safety check ------------------------------------------------------------------

def test_restore_into_place_refuses_a_running_primary():
    """Without pgbackrest_restore_overwrite_running the play refuses to restore over the running
    primary, and no host changes anything (the repository host starts no check or backup)."""
    rc, out = run_playbook("playbooks/restore.yml", "-e", "pgbackrest_restore_into=place", timeout=600)
    assert rc != 0 and "as the PRIMARY" in out and "pgbackrest_restore_overwrite_running=true" in out, out[-3000:]
    for host in (DB, REPO):
        assert bedlib.play_recap(out, host)["changed"] == 0, out[-3000:]
    assert "Restore 3/5" not in out and "Restore 5/5" not in out, out[-3000:]
    assert sh(DB, f"systemctl is-active {PG_UNIT}", check=False).stdout.strip() == "active"


# --- drill 8: to a point in time, into a scratch cluster ----------------------------------

def test_drill8_pitr_to_a_time_into_a_scratch_cluster():
    tag = run_tag("pitr")
    load = Load(tag, duration=600, count=100_000)
    t_restore = None
    try:
        time.sleep(10)  # rows of this run before T
        T = q("SELECT clock_timestamp()::text")[0][0]
        time.sleep(5)  # keep logging past T: the archive must hold commits after T
        wal_after = q("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        wait_s = wait_for(f"WAL segment {wal_after} in the repository", lambda: archived_wal() >= wal_after,
                          timeout=2 * ARCHIVE_TIMEOUT + 60, every=2)
        t0 = time.time()
        rc, out = run_playbook("playbooks/restore.yml", "-e", json.dumps({"pgbackrest_restore_target_time": T}),
                               timeout=900)
        t_restore = round(time.time() - t0, 1)
        assert rc == 0, f"restore.yml (to {T}) failed:\n{out[-4000:]}"
        print("\n".join(out.splitlines()[-28:]))  # the slowest tasks (profile_tasks)
        time.sleep(3)  # still logging on the live cluster while the copy exists
    finally:
        load.stop()
    summary, _calls = load.wait()
    try:
        figs = pitrcheck.compare_to_time(q, lambda sql: q(sql, port_=SCRATCH_PORT), T, tag)
        scratch_settings = dict(q("SELECT name, setting FROM pg_settings WHERE name IN"
                                  " ('archive_mode', 'listen_addresses')", port_=SCRATCH_PORT, db="postgres"))
        size_mb = int(sh(DB, f"du -sm /var/lib/postgresql/{PG_VERSION}/{SCRATCH} | cut -f1").stdout.strip() or 0)
        replayed_to = q("SELECT pg_last_xact_replay_timestamp()::text", port_=SCRATCH_PORT, db="postgres")[0][0]
    finally:
        sh(DB, f"pg_dropcluster {PG_VERSION} {SCRATCH} --stop", timeout=120, check=False)
    line = record(8, "pitr", tag=tag, T=T, sent=summary["sent"], answered=summary["answered"],
                  wait_archive_s=wait_s, restore_playbook_s=t_restore, restored_mb=size_mb,
                  last_replayed_commit=replayed_to, **pitrcheck.summary(figs), scratch_settings=scratch_settings)
    assert not pitrcheck.problems(figs), f"drill 8: {pitrcheck.problems(figs)}; {line}"
    assert scratch_settings == {"archive_mode": "off", "listen_addresses": "localhost"}, scratch_settings


# --- drill 9: the database host destroyed under load; latest state onto a fresh host ----------

def _platform() -> dict:
    """The db platform of the bed definition (.config/molecule/config.yml), for a fresh
    container with the same name, address and options."""
    cfg = yaml.safe_load((bedlib.PROJECT / ".config" / "molecule" / "config.yml").read_text())
    return next(p for p in cfg["platforms"] if "postgresql" in p.get("groups", []))


def fresh_db_container(image: str) -> None:
    plat = _platform()
    args = ["podman", "run", "-d", "--name", DB, "--hostname", plat.get("hostname", "db"),
            "--systemd=always", "--network", BED, "--ip", ADDRESSES["db"],
            "--label", "owner=molecule", "--label", f"pglog_bed={BED}"]
    for name, addr in ADDRESSES.items():
        args += ["--add-host", f"{name}:{addr}"]
    for limit in plat.get("ulimits", []):
        args += ["--ulimit", limit]
    for cap in plat.get("capabilities", []):
        args += ["--cap-add", cap]
    for mount in bedlib.ssh_mounts(plat.get("hostname", "db")):
        args += ["--volume", mount]
    args += list(plat.get("extra_opts", [])) + [image, plat.get("command", "/sbin/init")]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=120)
    wait_for("systemd in the fresh container", lambda: subprocess.run(
        ["podman", "exec", DB, "systemctl", "is-system-running"], capture_output=True, text=True,
        timeout=30, check=False).stdout.strip() in ("running", "degraded"), timeout=120)


def committed_rows(after: dict[str, int]) -> dict[tuple[str, int], float]:
    """(table, id) -> commit time (epoch) of the rows committed since the last call."""
    rows = q("SELECT 'requests', id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM requests"
             f" WHERE id > {after['requests']} UNION ALL"
             " SELECT 'responses', id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM responses"
             f" WHERE id > {after['responses']}", timeout=30)
    out = {}
    for table, rid, ts in rows:
        out[(table, int(rid))] = float(ts) if ts else 0.0
        after[table] = max(after[table], int(rid))
    return out


@pytest.mark.skipif(not HOST_LOST, reason="drill 9 (~10 min) runs with PGLOG_DRILL_HOST_LOST=1; over make test's budget")
def test_drill9_db_host_destroyed_restore_latest_onto_a_fresh_host():
    image = bedlib.bed_image()
    tag = run_tag("hostlost")
    gw_load = f"{bedlib.GATEWAY_SCHEME}://{ADDRESSES['gateway']}:{port()}/v1/chat/completions"
    load = Load(tag, duration=900, count=100_000, host=GW, url=gw_load)
    seen: dict[tuple[str, int], float] = {}
    after = {t: int(q(f"SELECT coalesce(max(id), 0) FROM {t}")[0][0]) for t in ("requests", "responses")}
    base = dict(after)
    try:
        lead = 15 + random.uniform(0, ARCHIVE_TIMEOUT / 2)  # where in the archive cycle the loss falls: any
        t_end = time.time() + lead
        while time.time() < t_end:
            t_snap = time.time()  # rows committed before this are in `seen` after the query
            seen.update(committed_rows(after))
            time.sleep(0.5)
        archiver = q("SELECT last_archived_wal, extract(epoch FROM last_archived_time) FROM pg_stat_archiver")[0]
        t_loss = time.time()
        subprocess.run(["podman", "rm", "-f", "-t", "0", DB], check=True, capture_output=True, timeout=120)
        t0 = time.time()
        fresh_db_container(image)
        rc, out = run_playbook("molecule/shared/prepare.yml", "--limit", DB, timeout=600)
        assert rc == 0, f"prepare of the fresh host failed:\n{out[-3000:]}"
        fresh_s = round(time.time() - t0, 1)
        t0 = time.time()
        rc, out = run_playbook("playbooks/restore.yml", "-e", "pgbackrest_restore_into=place", timeout=1800)
        restore_s = round(time.time() - t0, 1)
        assert rc == 0, f"restore.yml (latest, into place, fresh host) failed:\n{out[-4000:]}"
        print("\n".join(out.splitlines()[-28:]))  # the slowest tasks (profile_tasks)
        time.sleep(5)  # logging resumes on the restored database
    finally:
        load.stop()
    summary, calls = load.wait()

    # rows the restore brought back from the archive: committed before the loss
    restored = {k: v for k, v in committed_rows(dict(base)).items() if 0 < v <= t_loss}
    missing = {k: v for k, v in seen.items() if k not in restored}
    unseen_restored = {k: v for k, v in restored.items() if k not in seen}
    bound = t_loss - ARCHIVE_TIMEOUT
    late = [k for k, v in missing.items() if v <= bound]
    gap_s = round(t_loss - max(restored.values()), 1) if restored else None

    # the clients' view after the gateway replayed its spool: answered calls without rows
    answered = [c for c in calls if c["status"] == 200 and c["call_id"]]
    window = [c for c in answered if bound - 5 < c["end"] <= t_loss]
    figs = settle(tag, calls, expect_lost=len(window))
    by_call = {row[0] for row in q("SELECT call_id FROM requests WHERE tags @> jsonb_build_array("
                                   f"'run:{tag}')")}
    lost_calls = [c for c in answered if c["call_id"] not in by_call]
    lost_outside = [round(t_loss - c["end"], 1) for c in lost_calls if not (bound - 5 < c["end"] <= t_loss)]
    line = record(9, "host_lost", tag=tag, archive_timeout_s=ARCHIVE_TIMEOUT, sent=summary["sent"],
                  answered=len(answered), last_archived_wal_before_loss=archiver[0],
                  last_archive_before_loss_s=round(t_loss - float(archiver[1] or 0), 1),
                  rows_seen_committed=len(seen), rows_restored_from_archive=len(restored),
                  rows_lost=len(missing), gap_s=gap_s, fresh_host_s=fresh_s, restore_playbook_s=restore_s,
                  committed_before_bound_missing=len(late),
                  restored_not_seen_s_before_loss=sorted(round(t_loss - v, 1) for v in unseen_restored.values()),
                  lost_calls=len(lost_calls), lost_calls_outside_window_s=lost_outside,
                  orphans=figs["orphans"], duplicated=figs["duplicated"],
                  spool_segments_after=figs["spool_segments_after"])
    assert seen, "drill 9: no row committed before the loss (no load?)"
    assert not late, f"drill 9: {len(late)} rows committed more than {ARCHIVE_TIMEOUT} s before the loss are missing"
    assert gap_s is not None and gap_s <= ARCHIVE_TIMEOUT + 5, f"drill 9: gap {gap_s} s > archive_timeout"
    # rows restored but never seen by the poller can only be from after its last query
    assert all(v >= t_snap - 1 for v in unseen_restored.values()), line
    assert not lost_outside, f"drill 9: answered calls lost outside the archive window: {lost_outside}"
    assert figs["orphans"] == 0 and figs["duplicated"] == 0 and figs["spool_segments_after"] == 0, figs
    # the repository keeps working from the restored host
    assert sh(REPO, "runuser -u postgres -- pgbackrest --stanza=pglog check", timeout=300, check=False).returncode == 0
    assert sh(DB, f"systemctl is-active {PG_UNIT}", check=False).stdout.strip() == "active"
