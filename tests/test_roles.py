"""Rules between roles that no single role's tests can see."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_roles_writing_the_same_file_write_the_same_content():
    """/etc/nftables.conf is written by whichever of postgresql, pgbackrest and exporters runs on
    a host: copies that differ (even in a comment) make every run rewrite it (the idempotence
    failure of 2026-12-02: the gateway host flipped between pgbackrest's and exporters' copy)."""
    writers: dict[str, list[pathlib.Path]] = {}
    for task_file in ROOT.glob("roles/*/tasks/*.yml"):
        text = task_file.read_text()
        for src, dest in re.findall(r"src:\s*(\S+)\s*\n\s*dest:\s*(/etc/\S+)", text):
            role = task_file.parts[-3]
            writers.setdefault(dest, []).append(ROOT / "roles" / role / "templates" / src)
    shared = {dest: paths for dest, paths in writers.items() if len({p.parts[-3] for p in paths}) > 1}
    assert "/etc/nftables.conf" in shared, sorted(writers)
    for dest, paths in shared.items():
        contents = {p.read_text() for p in paths if p.exists()}
        assert len(contents) == 1, f"{dest} is written differently by {[str(p.relative_to(ROOT)) for p in paths]}"


def test_every_package_install_rides_out_a_passing_mirror_failure():
    """A converge installs a dozen package sets from the Debian mirror on a fresh host, and one 503
    or hash mismatch while the mirror syncs fails the whole run. (CI's HA converge failed on
    2026-12-04 with code that passed the same converge before and after; its output's tail did
    not say which task, and a mirror error is the cause nobody could rule out.) Every apt task of
    the roles retries, as the beds' prepare step already did for its index download."""
    import yaml

    missing, seen = [], 0
    for task_file in sorted(ROOT.glob("roles/*/tasks/*.yml")):
        for task in yaml.safe_load(task_file.read_text()) or []:
            if "ansible.builtin.apt" not in task:
                continue
            seen += 1
            reg = task.get("register")
            if not (reg and task.get("until") == f"{reg} is succeeded" and int(task.get("retries", 0)) >= 2):
                missing.append(f"{task_file.relative_to(ROOT)}: {task['name']}")
    assert seen >= 10, seen  # the search finds the installs at all
    assert not missing, missing


def test_stanza_create_waits_out_a_moment_without_a_primary():
    """CI's HA converge (2026-12-04, twice; then on the pre-check bed, journal read live): etcd lost
    quorum for ~20 s under the machine's disk stalls ("leader failed to send out heartbeat on time
    ... slow disk", "stepped down to follower since quorum is not active"), Patroni demoted the
    primary ("DCS is not accessible and I was a leader") and promoted it again 47 s later; a
    stanza-create in between failed with pgBackRest's error 56 ("unable to find primary cluster").
    The task retries that error alone, for longer than Patroni takes to elect a leader (ttl +
    loop_wait = 25 s with the role's defaults); other errors still fail at once."""
    import yaml

    tasks = yaml.safe_load((ROOT / "roles/pgbackrest/tasks/stanza.yml").read_text())
    create = next(t for t in tasks if t["name"] == "Create the stanza")
    assert create["until"] == f"{create['register']}.rc | default(0) != 56"
    assert int(create["retries"]) * int(create["delay"]) >= 25 + 5
