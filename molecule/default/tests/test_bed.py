"""The bed itself and the base role: real systemd, packages, time zone,
name resolution and reachability, no unexpected listeners."""

import re

import pytest

from bedlib import inventory_vars, podman_hosts_in, role_defaults

testinfra_hosts = podman_hosts_in("all")

# The TCP port each group's service may listen on: (role, variable). The value
# comes from the inventory, else from the role's defaults; nothing else may
# listen (any address) but sshd. "*": every host.
SERVICE_PORTS = {
    "*": [("exporters", "exporters_node_port")],
    "postgresql": [("postgresql", "postgresql_port"), ("pgbackrest", "pgbackrest_tls_port"),
                   ("exporters", "exporters_postgres_port")],
    "litellm_gateway": [("litellm_gateway", "litellm_gateway_port"),
                        ("litellm_gateway", "litellm_gateway_metrics_port")],
    "upstream_stub": [("upstream_stub", "upstream_stub_port")],
    "pgbackrest_repo": [("pgbackrest", "pgbackrest_tls_port")],
    "monitoring": [("monitoring", "monitoring_prometheus_port"), ("monitoring", "monitoring_alertmanager_port"),
                   ("monitoring", "monitoring_webhook_sink_port")],
}
# a role default that reads a shared inventory value: "{{ pglog_x | default(N) }}"
_SHARED_DEFAULT = re.compile(r"^\{\{\s*(\w+)\s*\|\s*default\((\d+)\)\s*\}\}$")


def _port(hostvars, role, var):
    value = hostvars.get(var, role_defaults(role).get(var))
    m = _SHARED_DEFAULT.match(value) if isinstance(value, str) else None
    if m:
        value = hostvars.get(m.group(1), m.group(2))
    return None if value is None else int(value)


def allowed_tcp_ports(name, groups):
    hostvars = inventory_vars(name)
    ports = set()
    for group in (groups | {"*"}) & SERVICE_PORTS.keys():
        for role, var in SERVICE_PORTS[group]:
            port = _port(hostvars, role, var)
            if port is not None:
                ports.add(port)
    # sshd: how Ansible reaches every host, the bed's as production's
    ports.add(int(hostvars.get("ansible_port", 22)))
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


def test_security_updates_are_an_apt_source(host):
    out = host.run("grep -rhE '^[^#]*[a-z]+-security' /etc/apt/sources.list /etc/apt/sources.list.d")
    assert out.rc == 0 and "-security" in out.stdout, "no *-security apt source"
    assert host.run("apt-cache policy | grep -q -- '-security'").rc == 0, "apt has not read the security index"


def test_cheap_hardening(host):
    defaults = role_defaults("base")
    # a stricter login umask reaches sudo (pam_umask), hence Ansible's become: it made the
    # gateway's release venv unreadable to its service user; it stays 022 (none set: trixie's default)
    umasks = [line.split()[1] for line in host.file("/etc/login.defs").content_string.splitlines()
              if line.split()[:1] == ["UMASK"]]
    assert all(u.lstrip("0") == "22" for u in umasks), umasks
    assert host.file("/etc/sudoers.d").mode == 0o750
    blocked = host.file("/etc/modprobe.d/pglog-hardening.conf").content_string
    for module in defaults["base_blocked_kernel_modules"]:
        assert f"install {module} /bin/false" in blocked


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
