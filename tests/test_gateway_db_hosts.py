"""roles/litellm_gateway's database address with one or several database hosts: the defaults,
the env file (gateway.env.j2) and the migration's environment (vars/main.yml) as Ansible renders
them, checked against what litellm_pglog.config reads -- in the control venv's ansible-playbook,
on localhost, nothing else touched."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from litellm_pglog.config import Settings

PROJECT = Path(__file__).resolve().parents[1]
ROLE = PROJECT / "roles" / "litellm_gateway"
PLAYBOOK = PROJECT / ".venv" / "bin" / "ansible-playbook"

pytestmark = pytest.mark.skipif(not PLAYBOOK.exists(), reason="no control venv (.venv): make venvs")

# host -> its variables: one with pglog_host_address (wins over ansible_host), one with
# ansible_host only, one with neither (its inventory name is its address)
DB_HOSTS = {
    "db1": {"pglog_host_address": "10.0.0.11", "ansible_host": "192.0.2.11"},
    "db2": {"ansible_host": "10.0.0.12"},
    "db3.example": {},
}


def render(tmp_path: Path, db_hosts: list[str], extra: dict | None = None) -> dict[str, str]:
    """The env file, the owner's migration env and the validated role arguments for a
    `postgresql` group of these hosts. Returns {name: text} of what was written."""
    import json

    inventory = {"all": {"hosts": {"gw": {"ansible_connection": "local",
                                          "ansible_python_interpreter": str(PLAYBOOK.parent / "python")}},
                         "children": {"postgresql": {"hosts": {h: DB_HOSTS[h] for h in db_hosts}}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    secrets = {"litellm_master_key": "sk-master", "pglog_writer_password": "writer-pw",
               "pglog_owner_password": "owner-pw", "litellm_gateway_upstream_api_keys": {}}
    secrets.update(extra or {})
    (tmp_path / "extra.json").write_text(json.dumps(secrets))
    (tmp_path / "play.yml").write_text(textwrap.dedent(f"""\
        - hosts: gw
          gather_facts: false
          vars_files:
            - {ROLE}/defaults/main.yml
            - {ROLE}/vars/main.yml
          tasks:
            - name: the role's own argument checks of the two options
              ansible.builtin.validate_argument_spec:
                argument_spec: "{{{{ _spec | dict2items | selectattr('key', 'in', _names) | items2dict }}}}"
                provided_arguments:
                  litellm_gateway_db_host: "{{{{ litellm_gateway_db_host }}}}"
                  litellm_gateway_db_target_session_attrs: "{{{{ litellm_gateway_db_target_session_attrs }}}}"
              vars:
                _spec: "{{{{ (lookup('file', '{ROLE}/meta/argument_specs.yml') | from_yaml).argument_specs.main.options }}}}"
                _names: [litellm_gateway_db_host, litellm_gateway_db_target_session_attrs]
            - name: env file
              ansible.builtin.template:
                src: {ROLE}/templates/gateway.env.j2
                dest: {tmp_path}/gateway.env
                mode: "0600"
            - name: owner env
              ansible.builtin.copy:
                content: "{{{{ litellm_gateway__owner_env }}}}"
                dest: {tmp_path}/owner.env
                mode: "0600"
        """))
    res = subprocess.run([str(PLAYBOOK), "-i", str(tmp_path / "inventory.json"), "-e", f"@{tmp_path / 'extra.json'}",
                          str(tmp_path / "play.yml")], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": f"{PLAYBOOK.parent}:/usr/bin:/bin", "ANSIBLE_NOCOLOR": "1",
                              "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-tmp"), "HOME": str(tmp_path)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {name: (tmp_path / name).read_text() for name in ("gateway.env", "owner.env")}


def env_of(text: str) -> dict[str, str]:
    """KEY='value' lines as systemd's EnvironmentFile (and `. /dev/stdin`) read them."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value.strip("'")
    return out


def test_one_database_host_keeps_todays_env(tmp_path):
    files = render(tmp_path, ["db1"])
    for name in ("gateway.env", "owner.env"):
        env = env_of(files[name])
        assert env["PGLOG_DB_HOST"] == "10.0.0.11" and env["PGLOG_DB_PORT"] == "5432"
        assert "PGLOG_DB_TARGET_SESSION_ATTRS" not in env, name
    s = Settings.from_env(env_of(files["gateway.env"]))
    assert s.db_hosts == ("10.0.0.11",) and s.target_session_attrs is None


def test_several_database_hosts_are_all_listed_with_read_write(tmp_path):
    files = render(tmp_path, ["db1", "db2", "db3.example"])
    for name in ("gateway.env", "owner.env"):
        env = env_of(files[name])
        # each host's address: pglog_host_address, else ansible_host, else its inventory name
        assert env["PGLOG_DB_HOST"] == "10.0.0.11,10.0.0.12,db3.example", name
        assert env["PGLOG_DB_TARGET_SESSION_ATTRS"] == "read-write", name
        s = Settings.from_env(env)
        assert s.db_hosts == ("10.0.0.11", "10.0.0.12", "db3.example") and s.db_ports == (5432,) * 3
        assert s.target_session_attrs == "read-write"


def test_target_session_attrs_can_be_overridden_within_libpqs_choices(tmp_path):
    files = render(tmp_path, ["db1", "db2"], {"litellm_gateway_db_target_session_attrs": "primary"})
    assert env_of(files["gateway.env"])["PGLOG_DB_TARGET_SESSION_ATTRS"] == "primary"
    files = render(tmp_path, ["db1", "db2"], {"litellm_gateway_db_target_session_attrs": ""})
    assert "PGLOG_DB_TARGET_SESSION_ATTRS" not in env_of(files["gateway.env"])  # the package's default then
    with pytest.raises(AssertionError, match="litellm_gateway_db_target_session_attrs"):
        render(tmp_path, ["db1", "db2"], {"litellm_gateway_db_target_session_attrs": "master"})
