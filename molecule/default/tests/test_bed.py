"""The bed itself and the base role: real systemd, packages, time zone,
name resolution and reachability, no unexpected listeners."""

import pytest

from bedlib import inventory_vars, podman_hosts_in, role_defaults

testinfra_hosts = podman_hosts_in("all")

# The TCP port each group's service may listen on: (role, variable). The value
# comes from the inventory, else from the role's defaults; nothing else may
# listen (any address).
SERVICE_PORTS = {
    "postgresql": [("postgresql", "postgresql_port"), ("pgbackrest", "pgbackrest_tls_port")],
    "litellm_gateway": [("litellm_gateway", "litellm_gateway_port")],
    "upstream_stub": [("upstream_stub", "upstream_stub_port")],
    "pgbackrest_repo": [("pgbackrest", "pgbackrest_tls_port")],
}


def allowed_tcp_ports(name, groups):
    hostvars = inventory_vars(name)
    ports = set()
    for group in groups & SERVICE_PORTS.keys():
        for role, var in SERVICE_PORTS[group]:
            value = hostvars.get(var, role_defaults(role).get(var))
            if value is not None:
                ports.add(int(value))
    return ports


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_systemd_is_running(host):
    state = host.run("systemctl is-system-running").stdout.strip()
    failed = host.run("systemctl --failed --no-legend --plain").stdout
    assert state == "running", f"systemd state {state!r}; failed units:\n{failed}"


def test_base_packages_installed(host):
    wanted = role_defaults("base")["base_packages"]
    missing = [p for p in wanted if not host.package(p).is_installed]
    assert not missing, f"base packages missing: {missing}"


def test_time_zone(host):
    wanted = inventory_vars(host.backend.get_hostname()).get(
        "base_timezone", role_defaults("base")["base_timezone"]
    )
    zone = host.run("timedatectl show --property=Timezone --value").stdout.strip()
    assert zone == wanted
    assert host.file("/etc/localtime").linked_to.endswith(f"/{wanted}")


@pytest.mark.parametrize("peer", ["db", "gateway"])
def test_names_resolve_to_bed_addresses(host, peer, bed_addresses):
    resolved = host.run(f"getent ahostsv4 {peer}").stdout.split()
    assert resolved, f"{peer} does not resolve on {host.backend.get_hostname()}"
    assert resolved[0] == bed_addresses[peer]


@pytest.mark.parametrize("peer", ["db", "gateway"])
def test_hosts_reach_each_other(host, peer):
    ping = host.run(f"ping -c 2 -W 2 {peer}")
    assert ping.rc == 0, ping.stdout + ping.stderr


def test_etc_hosts_pins_every_bed_host(host, bed_addresses):
    block = host.file("/etc/hosts").content_string
    assert "BEGIN ANSIBLE MANAGED: base role" in block
    for name, address in bed_addresses.items():
        assert any(
            line.split()[:1] == [address] and name in line.split()
            for line in block.splitlines()
        ), f"/etc/hosts lacks '{address} ... {name}'"


def test_no_unexpected_tcp_listeners(host, host_groups):
    allowed = allowed_tcp_ports(host.backend.get_hostname(), host_groups)
    listening = {
        int(sock.rsplit(":", 1)[1])
        for sock in host.run("ss -Htln | awk '{print $4}'").stdout.split()
    }
    unexpected = sorted(listening - allowed)
    assert not unexpected, f"unexpected TCP listeners: {unexpected}"
