"""Fixtures of the two-host bed's tests (testinfra, run by `molecule verify`).

Everything the tests know about the bed (paths, units, addresses, secrets, the one
playbook runner) is in molecule/shared/bedlib.py; this file only turns some of it into
fixtures. Tests pick hosts by group, as the roles do.
"""

import pytest

import bedlib


@pytest.fixture(scope="session")
def bed_addresses():
    """Short host name -> address, as the bed's definition assigns them."""
    return dict(bedlib.ADDRESSES)


@pytest.fixture(scope="session")
def inventory_groups():
    return bedlib.inventory_groups()


@pytest.fixture()
def host_groups(host):
    """Groups the host under test belongs to (podman:// or ansible:// host)."""
    return set(bedlib.inventory_vars(host.backend.get_hostname()).get("group_names", []))


@pytest.fixture(autouse=True)
def bed_container_running(request):
    """Fail fast with a plain message when the host under test is not running
    (instead of each check failing on "container state improper")."""
    if "host" not in request.fixturenames:
        return
    name = request.getfixturevalue("host").backend.get_hostname()
    state = bedlib.container_state(name)
    if state != "running":
        pytest.fail(f"bed container {name} is {state or 'missing'}, not running", pytrace=False)
