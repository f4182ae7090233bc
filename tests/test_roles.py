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
