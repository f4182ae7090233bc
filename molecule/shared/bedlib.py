"""What every scenario's tests know about the bed, defined once (imported as `bedlib`;
the root pytest.ini puts molecule/shared on the path).

The tests run on the control node under `molecule verify`: molecule's environment names the
inventory and the ephemeral directory; the bed's name and subnet come from PGLOG_BED and
PGLOG_SUBNET as in .config/molecule/config.yml. Unit names and paths are read from the
roles' own defaults, so a renamed cluster or unit needs no edit here.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

PROJECT = Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY") or Path(__file__).resolve().parents[2])
BED = os.environ.get("PGLOG_BED", "pglog-test")
SUBNET = os.environ.get("PGLOG_SUBNET", "10.89.71")
LAB_DIR = Path(os.environ.get("PGLOG_LAB_DIR") or PROJECT / ".lab" / BED)
# Short host name -> address, as .config/molecule/config.yml assigns them.
ADDRESSES = {"db": f"{SUBNET}.19", "gateway": f"{SUBNET}.18"}


@functools.cache
def role_defaults(role: str) -> dict[str, Any]:
    """A role's defaults/main.yml, as written (templates not rendered)."""
    return yaml.safe_load((PROJECT / "roles" / role / "defaults" / "main.yml").read_text()) or {}


def _pg(name: str) -> str:
    return str(role_defaults("postgresql")[name])


def _gw(name: str) -> str:
    return str(role_defaults("litellm_gateway")[name])


GATEWAY_UNIT = "litellm-gateway.service"
# its listening socket, held by systemd across restarts of the service (roles/litellm_gateway)
GATEWAY_SOCKET = "litellm-gateway.socket"
PG_UNIT = f"postgresql@{_pg('postgresql_version')}-{_pg('postgresql_cluster_name')}.service"
PG_CONF_DIR = f"/etc/postgresql/{_pg('postgresql_version')}/{_pg('postgresql_cluster_name')}"
GATEWAY_BASE = _gw("litellm_gateway_base_dir")
GATEWAY_CONFIG_DIR = _gw("litellm_gateway_config_dir")
GATEWAY_CONFIG = f"{GATEWAY_CONFIG_DIR}/config.yaml"
GATEWAY_ENV_FILE = f"{GATEWAY_CONFIG_DIR}/gateway.env"
GATEWAY_STATE_DIR = _gw("litellm_gateway_state_dir")
GATEWAY_PORT = int(_gw("litellm_gateway_port"))
PGLOG_CLI = f"{GATEWAY_BASE}/current/bin/litellm-pglog"
GATEWAY_PYTHON = f"{GATEWAY_BASE}/current/bin/python"
# HTTPS (the lab keeps the role's default: on, certificate from the bed's private CA)
GATEWAY_TLS = bool(role_defaults("litellm_gateway")["litellm_gateway_tls_enabled"])
GATEWAY_SCHEME = "https" if GATEWAY_TLS else "http"
GATEWAY_URL = f"{GATEWAY_SCHEME}://{ADDRESSES['gateway']}:{GATEWAY_PORT}"
# the CA certificate as the role installs it on the gateway host (health checks use it)
GATEWAY_TLS_CA = _gw("litellm_gateway_tls_ca_file").replace("{{ litellm_gateway_config_dir }}", GATEWAY_CONFIG_DIR)
# the bed's private CA on the control node (role pki), which signs the gateway's certificate
LAB_CA = LAB_DIR / "pki" / "ca.crt"
# where install_ca() puts it on a client container
CLIENT_CA = "/usr/local/share/pglog-test/ca.crt"


def install_ca(container: str) -> str:
    """Copies the bed's CA certificate onto a client container (podman cp; idempotent) and
    returns its path there, for curl --cacert and the load generator's --ca-file."""
    subprocess.run(["podman", "exec", container, "mkdir", "-p", os.path.dirname(CLIENT_CA)],
                   check=True, timeout=60)
    subprocess.run(["podman", "cp", str(LAB_CA), f"{container}:{CLIENT_CA}"], check=True, timeout=60)
    return CLIENT_CA


# --- secrets --------------------------------------------------------------------------

def lab_secret(name: str) -> str:
    """One generated secret of the bed (the lab inventory's password lookups write them;
    the lookup may store "value salt=..." in its file: the value is what counts)."""
    value = (LAB_DIR / "secrets" / name).read_text().strip().split(" salt=")[0]
    assert len(value) >= 16, f"lab secret {name} looks wrong"
    return value


def lab_secrets() -> dict[str, str]:
    """Every secret value of the bed, by the variable name the lab inventory gives it."""
    return {
        "litellm_master_key": "sk-" + lab_secret("litellm_master_key"),
        "litellm_team_key": "sk-" + lab_secret("litellm_team_key"),
        "pglog_owner_password": lab_secret("pglog_owner_password"),
        "pglog_writer_password": lab_secret("pglog_writer_password"),
        "upstream_stub_api_key": lab_secret("upstream_stub_api_key"),
        "pglog_backup_passphrase": lab_secret("pglog_backup_passphrase"),
    }


# The HA topology's own secrets (molecule/ha); a two-host bed never generates them.
HA_SECRETS = ("pglog_replication_password", "pglog_rewind_password", "pglog_patroni_api_password")


# --- inventory --------------------------------------------------------------------------

@functools.cache
def _runner():
    # one `ansible-inventory` call per session, not per lookup
    import testinfra.utils.ansible_runner

    return testinfra.utils.ansible_runner.AnsibleRunner(os.environ["MOLECULE_INVENTORY_FILE"])


def hosts_in(group: str) -> list[str]:
    """Inventory names (= container names) of the hosts of a group."""
    return _runner().get_hosts(group)


def podman_hosts_in(group: str) -> list[str]:
    """testinfra_hosts for a group, connected straight through `podman exec`: testinfra's
    ansible backend does not know the podman connection and would run every command as an
    ad-hoc ansible task (~5 s each); the podman backend takes ~0.1 s."""
    return [f"podman://{name}" for name in hosts_in(group)]


def inventory_vars(name: str) -> dict[str, Any]:
    """Variables of an inventory host (group_vars included), without ansible's per-command
    overhead."""
    return _runner().get_variables(name)


def inventory_groups() -> dict[str, Any]:
    return _runner().inventory.get("all", {}).get("children", {})


def ssh_mounts(hostname: str) -> list[str]:
    """`podman run --volume` arguments of a bed container's SSH access, the same three as
    molecule/shared/create.yml mounts: the control node's public key as root's
    authorized_keys, the platform's host key (so a re-created container answers with the key
    the bed's known_hosts expects)."""
    ssh = LAB_DIR / "ssh"
    return [f"{ssh}/id_ed25519.pub:/root/.ssh/authorized_keys:ro",
            f"{ssh}/host_{hostname}:/etc/ssh/ssh_host_ed25519_key:ro",
            f"{ssh}/host_{hostname}.pub:/etc/ssh/ssh_host_ed25519_key.pub:ro"]


def container_state(name: str) -> str:
    return subprocess.run(["podman", "container", "inspect", "--format", "{{.State.Status}}", name],
                          capture_output=True, text=True, timeout=30, check=False).stdout.strip()


def bed_image() -> str:
    """The image the bed's containers run (whatever PGLOG_IMAGE said, or what create.yml
    built), for throwaway containers of a test."""
    name = hosts_in("all")[0]
    return subprocess.run(["podman", "container", "inspect", "--format", "{{.ImageName}}", name],
                          capture_output=True, text=True, timeout=30, check=True).stdout.strip()


# --- playbooks ------------------------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run_playbook(playbook: str | Path, *args: str, timeout: float = 900,
                 extra_env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str]:
    """ansible-playbook against the bed, from the repository root (or `cwd`), with the bed's
    inventory and the repository's ansible.cfg -- exactly what a user types
    (`ansible-playbook site.yml -i INVENTORY`). Returns (exit code, stdout + stderr without
    colour codes). Bounded by `timeout` seconds. The one runner of every scenario's tests.

    Colours: molecule exports ANSIBLE_FORCE_COLOR when the terminal has colours, and
    ANSIBLE_NOCOLOR does not win over it; both are switched off here, and escape codes
    that still come through are stripped before anyone parses a recap.
    """
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1", NO_COLOR="1",
               PGLOG_LAB_DIR=str(LAB_DIR), PGLOG_BED=BED, PGLOG_SUBNET=SUBNET, **(extra_env or {}))
    # the repository's ansible.cfg, as a user has it (also when started elsewhere)
    env["ANSIBLE_CONFIG"] = str(PROJECT / "ansible.cfg")
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    cmd = [str(ansible_playbook), "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(playbook), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                       cwd=cwd or PROJECT, check=False)
    return p.returncode, _ANSI.sub("", p.stdout + p.stderr)


def assert_check_mode_changes_nothing() -> None:
    """`ansible-playbook site.yml --check --diff` on the converged bed, as a user types it:
    exit 0, and every host of the bed reports changed=0, failed=0, unreachable=0."""
    rc, out = run_playbook("site.yml", "--check", "--diff")
    assert rc == 0, f"--check --diff failed:\n{out[-4000:]}"
    for name in hosts_in("all"):
        counts = play_recap(out, name)
        assert counts["failed"] == 0 and counts["unreachable"] == 0, (name, counts)
        assert counts["changed"] == 0, f"{name}: --check reports {counts['changed']} change(s):\n{out[-4000:]}"


def play_recap(out: str, host: str) -> dict[str, int]:
    """The PLAY RECAP counters of one host (the last recap in `out`)."""
    found = re.findall(rf"^{re.escape(host)}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)",
                       _ANSI.sub("", out), re.M)
    assert found, f"no recap line for {host}"
    return dict(zip(("ok", "changed", "unreachable", "failed"), map(int, found[-1])))


# --- waits ------------------------------------------------------------------------------------

def wait_for(what: str, check, timeout: float, every: float = 1.0) -> float:
    """Polls `check()` every `every` s until true; the seconds it took, or AssertionError after
    `timeout` s (every wait of the tests is bounded)."""
    t0 = time.time()
    while not check():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)
    return round(time.time() - t0, 1)
