"""Shared fixtures of the test-bed tests (testinfra, run by `molecule verify`).

Hosts come from molecule's generated inventory; tests pick them by group,
as the roles do.
"""

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest
import testinfra.utils.ansible_runner


@functools.cache
def _runner():
    # one `ansible-inventory` call per session, not per lookup
    return testinfra.utils.ansible_runner.AnsibleRunner(
        os.environ["MOLECULE_INVENTORY_FILE"]
    )


def hosts_in(group):
    """Inventory names of the hosts of a group."""
    return _runner().get_hosts(group)


def podman_hosts_in(group):
    """testinfra_hosts for a group, connected straight through `podman exec`.

    Inventory names are the container names. testinfra's ansible backend does
    not know the podman connection and would run every command as an ad-hoc
    ansible task (~5 s each); the podman backend takes ~0.1 s.
    """
    return [f"podman://{name}" for name in hosts_in(group)]


def inventory_vars(name):
    """Variables of an inventory host (group_vars included), without ansible's
    per-command overhead."""
    return _runner().get_variables(name)


@pytest.fixture(scope="session")
def bed_subnet():
    return os.environ.get("PGLOG_SUBNET", "10.89.71")


@pytest.fixture(scope="session")
def bed_addresses(bed_subnet):
    """Short host name -> address, as molecule.yml assigns them."""
    return {"db": f"{bed_subnet}.19", "gateway": f"{bed_subnet}.18"}


@pytest.fixture(scope="session")
def inventory_groups():
    return _runner().inventory.get("all", {}).get("children", {})


@pytest.fixture()
def host_groups(host):
    """Groups the host under test belongs to (podman:// or ansible:// host)."""
    return set(inventory_vars(host.backend.get_hostname()).get("group_names", []))


@pytest.fixture(autouse=True)
def bed_container_running(request):
    """Fail fast with a plain message when the host under test is not running
    (instead of each check failing on "container state improper")."""
    if "host" not in request.fixturenames:
        return
    name = request.getfixturevalue("host").backend.get_hostname()
    state = subprocess.run(
        ["podman", "container", "inspect", "--format", "{{.State.Status}}", name],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout.strip()
    if state != "running":
        pytest.fail(f"bed container {name} is {state or 'missing'}, not running", pytrace=False)


PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY", Path(__file__).resolve().parents[3]))


def run_playbook(playbook, *args, timeout=900):
    """ansible-playbook against the bed with molecule's inventory and config;
    returns (exit code, stdout + stderr). Bounded by `timeout` seconds."""
    eph = os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]
    env = dict(os.environ,
               ANSIBLE_CONFIG=os.path.join(eph, "ansible.cfg"),
               ANSIBLE_ROLES_PATH=str(PROJECT / "roles"),
               ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1")
    # the lab inventory finds the bed's generated secrets and CA through it
    env.setdefault("PGLOG_LAB_DIR", str(PROJECT / ".lab" / os.environ.get("PGLOG_BED", "pglog-test")))
    cmd = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=PROJECT,
                       check=False)
    return p.returncode, p.stdout + p.stderr


def play_recap(out, host):
    """The PLAY RECAP counters of one host (the last recap in `out`)."""
    found = re.findall(rf"^{re.escape(host)}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       out, re.M)
    assert found, f"no recap line for {host}"
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, found[-1])))
