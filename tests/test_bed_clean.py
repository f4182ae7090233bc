"""`scripts/bed.sh clean` against real podman: it must remove every container of
a bed (the HA bed has db1, db2 and gateway, not db and gateway) before its
network, or CI's first step fails on leftovers of an aborted HA run
("network is being used"). Containers of other beds stay."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BED_SH = ROOT / "scripts" / "bed.sh"


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=120)


def bed_image() -> str | None:
    if shutil.which("podman") is None:
        return None
    out = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False).stdout.split()
    images = [i for i in out if i.startswith("localhost/pglog-")]
    return images[0] if images else None


@pytest.fixture
def leftover_bed():
    image = bed_image()
    if image is None:
        pytest.skip("needs podman and the test image (make image)")
    bed = f"pglog-ct{uuid.uuid4().hex[:6]}"
    # Other beds whose names start with this one's: not ours.
    others = (f"{bed}x-db", f"{bed}-two-db")
    podman("network", "create", bed)
    for name in (f"{bed}-db1", f"{bed}-db2", f"{bed}-gateway"):
        podman("create", "--network", bed, "--name", name, image, "sleep", "infinity")
    for name in others:
        podman("create", "--network", "none", "--name", name, image, "sleep", "infinity")
    state = ROOT / ".lab" / bed
    (state / "secrets").mkdir(parents=True)
    yield bed, others, state
    for name in (f"{bed}-db1", f"{bed}-db2", f"{bed}-gateway", *others):
        podman("rm", "-f", "-t", "0", name, check=False)
    podman("network", "rm", "-f", bed, check=False)
    shutil.rmtree(state, ignore_errors=True)


def test_clean_removes_every_container_of_the_bed_then_its_network(leftover_bed):
    bed, others, state = leftover_bed
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGLOG_")}
    result = subprocess.run(["bash", str(BED_SH), "clean", bed], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    left = podman("ps", "-a", "--format", "{{.Names}}").stdout.split()
    assert [n for n in left if n.startswith(f"{bed}-") and n not in others] == []
    assert podman("network", "exists", bed, check=False).returncode == 1
    assert not state.exists()
    assert set(others) <= set(left), "a container of another bed was removed"
