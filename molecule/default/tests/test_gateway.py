"""roles/litellm_gateway (+ roles/upstream_stub, playbooks/rollback.yml) on the test bed.

The gateway is called from the db host over the bed network, as a client would;
rows are read back with the package's own CLI (`litellm-pglog evidence`) using the
gateway's writer credentials. Secret values are the bed's real ones, read from the
lab secret files, and searched for where they must never appear.

The last tests run ansible-playbook themselves (a second release + rollback, bad
variables); they leave the bed on the release it had.
"""

import functools
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

import pytest
import testinfra

from bedlib import (
    ADDRESSES,
    GATEWAY_BASE,
    GATEWAY_CONFIG,
    GATEWAY_ENV_FILE,
    GATEWAY_PORT,
    GATEWAY_SCHEME,
    GATEWAY_UNIT,
    PGLOG_CLI,
    PROJECT,
    hosts_in,
    install_ca,
    inventory_vars,
    lab_secrets,
    play_recap,
    run_playbook,
)

testinfra_hosts = [f"podman://{h}" for h in hosts_in("litellm_gateway")]

UNIT = GATEWAY_UNIT
BASE = GATEWAY_BASE
VENV_CLI = PGLOG_CLI
ENV_FILE = GATEWAY_ENV_FILE
CONFIG = GATEWAY_CONFIG


# --- helpers -------------------------------------------------------------------

def gw_name():
    return hosts_in("litellm_gateway")[0]


def db_host():
    return testinfra.get_host(f"podman://{hosts_in('postgresql')[0]}")


def gw_vars():
    return inventory_vars(gw_name())


def gw_address():
    return ADDRESSES["gateway"]


def gw_port():
    return int(gw_vars().get("litellm_gateway_port", GATEWAY_PORT))


def model_names():
    return [m["name"] for m in gw_vars()["litellm_gateway_models"]]


def _auth_file(key):
    """Puts an 'Authorization: Bearer <key>' header file on the db host (0600,
    via podman cp, so the key is in no command line) and returns its path."""
    path = f"/run/gwtest-auth-{uuid.uuid4().hex[:8]}"
    with tempfile.NamedTemporaryFile("w", delete=False) as f:
        f.write(f"Authorization: Bearer {key}\n")
        local = f.name
    try:
        subprocess.run(["podman", "cp", local, f"{hosts_in('postgresql')[0]}:{path}"],
                       check=True, timeout=60)
    finally:
        os.unlink(local)
    db_host().run(f"chmod 600 {path}")
    return path


@functools.cache
def client_ca():
    """The bed CA on the db host (the client): curl verifies the gateway's certificate."""
    return install_ca(hosts_in("postgresql")[0])


def chat(body, key=None, path="/v1/chat/completions"):
    """POST from the db host over the network; returns (status, headers, json|None, t_done)."""
    db = db_host()
    auth = _auth_file(key) if key is not None else None
    req = f"/run/gwtest-body-{uuid.uuid4().hex[:8]}"
    db.run(f"cat > {req} <<'EOF'\n{json.dumps(body)}\nEOF")
    hdr_opt = f"-H @{auth}" if auth else ""
    cmd = (f"curl -sS --max-time 60 --cacert {client_ca()} -o {req}.out -D {req}.hdr -w '%{{http_code}}' "
           f"-H 'Content-Type: application/json' {hdr_opt} --data @{req} "
           f"{GATEWAY_SCHEME}://{gw_address()}:{gw_port()}{path}")
    res = db.run(cmd)
    t_done = time.time()
    try:
        assert res.rc == 0, f"curl failed: {res.stderr}"
        status = int(res.stdout.strip())
        headers = {}
        for line in db.file(f"{req}.hdr").content_string.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        text = db.file(f"{req}.out").content_string
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        return status, headers, payload, t_done
    finally:
        db.run(f"rm -f {req} {req}.out {req}.hdr {auth or ''}")


def evidence(host, what, tag):
    """`litellm-pglog evidence <what> --tag T --json` as the gateway's writer."""
    res = host.run(
        f"sh -c 'set -a; . {ENV_FILE}; set +a; exec {VENV_CLI} evidence {what} --tag {tag} --json'")
    assert res.rc == 0, f"litellm-pglog evidence {what} failed: {res.stderr[-500:]}"
    return json.loads(res.stdout.strip().splitlines()[-1])


def ansible(playbook, *args, check=False, timeout=900):
    """ansible-playbook against the bed; with check=True a failure fails the test."""
    rc, out = run_playbook(playbook, *args, timeout=timeout)
    if check:
        assert rc == 0, f"ansible-playbook {playbook} failed:\n{out[-4000:]}"
    return rc, out


# The gateway tier alone: the facts the role reads (the db host's address),
# then the tier's release and play files, as a user runs them.
GATEWAY_ONLY_PLAY = f"""
- name: Facts of every host
  hosts: all
  gather_facts: true
  tasks: []
- ansible.builtin.import_playbook: {PROJECT}/playbooks/wheelhouse.yml
- ansible.builtin.import_playbook: {PROJECT}/playbooks/gateway.yml
"""


@pytest.fixture(scope="module")
def gateway_play(tmp_path_factory):
    p = tmp_path_factory.mktemp("gwplay") / "gateway_only.yml"
    p.write_text(GATEWAY_ONLY_PLAY)
    return p


# --- service ----------------------------------------------------------------------

def test_service_active_enabled_as_its_own_user(host):
    svc = host.service("litellm-gateway")
    assert svc.is_running and svc.is_enabled
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert pid != "0"
    user = host.check_output(f"ps -o user= -p {pid}")
    assert user == "litellm-gateway"
    u = host.user("litellm-gateway")
    assert u.shell in ("/usr/sbin/nologin", "/bin/false") and u.uid < 1000
    # the unit runs the current release with the configured listener
    exec_start = host.check_output(f"systemctl show -p ExecStart --value {UNIT}")
    assert f"{BASE}/current/bin/python -m litellm_pglog.serve" in exec_start
    assert f"--host {gw_address()}" in exec_start and f"--port {gw_port()}" in exec_start


def test_the_listening_socket_is_systemds_and_the_server_serves_on_it(host):
    """litellm-gateway.socket holds the port (so a restart refuses no call: resilience drill 3)
    and the running server was handed that very socket, not one it bound itself."""
    sock = host.service("litellm-gateway.socket")
    assert sock.is_running and sock.is_enabled
    listen = host.check_output("systemctl show -p Listen --value litellm-gateway.socket")
    assert f"{gw_address()}:{gw_port()} (Stream)" in listen, listen
    owners = host.check_output(f"ss -Htlnp 'sport = :{gw_port()}'")
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert "systemd" in owners and f"pid={pid}," in owners, owners
    assert len(owners.splitlines()) == 1, f"more than one listening socket on the port: {owners}"
    journal = host.check_output(f"journalctl -u {UNIT} _PID={pid} --no-pager -o cat")
    assert "serving on the socket passed by systemd" in journal, journal[-2000:]


def test_secret_files_modes(host):
    env = host.file(ENV_FILE)
    assert env.mode == 0o600 and env.user == "litellm-gateway"
    assert host.file("/etc/litellm-gateway").mode == 0o750
    cfg = host.file(CONFIG).content_string
    assert "os.environ/LITELLM_MASTER_KEY" in cfg
    assert "litellm_pglog.auth.user_api_key_auth" in cfg
    assert "DATABASE_URL" not in env.content_string


def test_upstream_stub_service(host):
    svc = host.service("upstream-stub")
    assert svc.is_running and svc.is_enabled
    pid = host.check_output("systemctl show -p MainPID --value upstream-stub.service")
    assert host.check_output(f"ps -o user= -p {pid}") == "upstream-stub"
    assert host.socket("tcp://127.0.0.1:8080").is_listening


# --- the request path ----------------------------------------------------------------

def test_chat_from_db_host_is_logged_within_1s(host):
    tag = f"run:gwtest-{uuid.uuid4().hex[:10]}"
    words = " ".join(f"w{i}" for i in range(17))
    status, headers, body, t_done = chat(
        {"model": model_names()[0], "messages": [{"role": "user", "content": words}],
         "metadata": {"tags": [tag]}},
        key=lab_secrets()["litellm_master_key"])
    assert status == 200, body
    usage = body["usage"]
    assert usage["prompt_tokens"] > 17 and usage["completion_tokens"] > 0
    cost = float(headers["x-litellm-response-cost"])
    assert cost > 0
    deadline = time.time() + 10
    while True:
        resp = evidence(host, "responses-head", tag)
        if resp["count"] >= 1 or time.time() > deadline:
            break
        time.sleep(0.2)
    reqs = evidence(host, "requests-head", tag)
    assert reqs["count"] == 1 and resp["count"] == 1
    row = resp["rows"][0]
    assert row["status"] == "success"
    assert row["prompt_tokens"] == usage["prompt_tokens"]
    assert row["completion_tokens"] == usage["completion_tokens"]
    assert abs(float(row["cost_usd"]) - cost) < 1e-9
    # rows written by the database within 1 s of the client having its answer
    # (same kernel clock: the bed's containers share the host's)
    from datetime import datetime
    logged = datetime.fromisoformat(reqs["rows"][0]["logged_at"]).timestamp()
    delay = logged - t_done
    print(f"request row logged {delay * 1000:.0f} ms after the client got its answer")
    assert delay <= 1.0


@pytest.mark.parametrize("key", [None, "sk-wrong-key-0123456789abcdef"], ids=["missing", "wrong"])
def test_missing_or_wrong_key_is_401(key):
    status, _, body, _ = chat(
        {"model": model_names()[0], "messages": [{"role": "user", "content": "hi"}]}, key=key)
    assert status == 401, body


def test_unknown_model_is_4xx_and_logged_as_failure(host):
    tag = f"run:gwtest-{uuid.uuid4().hex[:10]}"
    status, _, body, _ = chat(
        {"model": "no-such-model", "messages": [{"role": "user", "content": "hello"}],
         "metadata": {"tags": [tag]}},
        key=lab_secrets()["litellm_master_key"])
    assert 400 <= status < 500, body
    deadline = time.time() + 10
    while True:
        resp = evidence(host, "responses-head", tag)
        if resp["count"] >= 1 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert resp["count"] == 1
    assert resp["rows"][0]["status"] == "failure"


def test_usage_report_on_the_gateway_adds_up_to_the_raw_rows(host):
    """`litellm-pglog report` as the gateway's writer: it refreshes the hourly rollup (the
    writer may, through the owner's SECURITY DEFINER function) and its totals equal the raw
    tables' (read as postgres on the database host, right after)."""
    res = host.run(f"sh -c 'set -a; . {ENV_FILE}; set +a; "
                   f"exec {VENV_CLI} report --since 2d --by status --format json --lag 0'")
    assert res.rc == 0, res.stderr[-500:]
    doc = json.loads(res.stdout.strip().splitlines()[-1])
    reported = sum(r["calls"] for r in doc["rows"])
    through = doc["rollup"]["logged_through"]
    raw = db_host().run(
        "runuser -u postgres -- psql -X -At -d litellm_db -c "
        f"\"SELECT count(*) FROM requests WHERE logged_at <= '{through}'\"")  # a fresh bed: all within 2 days
    assert raw.rc == 0, raw.stderr
    assert reported == int(raw.stdout.strip()) > 0
    assert {r["status"] for r in doc["rows"]} >= {"success", "failure"}


# --- secrets and offline install --------------------------------------------------------

def test_no_secret_in_journal_config_or_cmdlines(host):
    journal = host.check_output("journalctl --no-pager -o cat")
    config = host.file(CONFIG).content_string
    cmdlines = host.check_output(
        "sh -c 'for f in /proc/[0-9]*/cmdline; do tr \"\\0\" \" \" < $f 2>/dev/null; echo; done'")
    unit = host.file(f"/etc/systemd/system/{UNIT}").content_string
    for name, value in lab_secrets().items():
        assert value not in journal, f"{name} in the journal"
        assert value not in config, f"{name} in config.yaml"
        assert value not in cmdlines, f"{name} in a process command line"
        assert value not in unit, f"{name} in the unit file"
    # the env file does hold them (the test would be vacuous otherwise)
    env = host.file(ENV_FILE).content_string
    assert lab_secrets()["litellm_master_key"] in env
    assert lab_secrets()["pglog_owner_password"] not in env, "owner password belongs to migrations only"


def test_pip_installed_offline(host):
    record = host.file(f"{BASE}/current/.installed").content_string
    cmds = [ln for ln in record.splitlines() if ln.startswith("pip_")]
    assert len(cmds) == 2 and all("--no-index" in c for c in cmds), cmds
    assert "--require-hashes" in cmds[0]
    assert "Looking in links:" in record
    assert "Looking in indexes" not in record and "Downloading" not in record
    assert "Successfully installed" in record and "litellm-1.108.7" in record
    # the venv holds exactly the locked litellm, never a compromised one
    version = host.check_output(f"{BASE}/current/bin/python -c "
                                "'import importlib.metadata as m; print(m.version(\"litellm\"))'")
    assert version == "1.108.7"


# --- ansible runs: -v output, rollback, bad variables --------------------------------------

def test_second_release_then_rollback(host, gateway_play, tmp_path):
    """Deploys a second release (the package with one extra file => new package
    hash), checks the -v output for secrets, rolls back and checks the service."""
    first = host.check_output(f"readlink {BASE}/current")
    pkg = tmp_path / "litellm_pglog"
    shutil.copytree(PROJECT / "files" / "litellm_pglog", pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "dist"))
    (pkg / "ROLLBACK_TEST").write_text(uuid.uuid4().hex)
    t0 = time.time()
    _, out = ansible(gateway_play, "-v", "-e", f"wheelhouse_package_src={pkg}", check=True)
    print(f"second release deployed in {time.time() - t0:.0f} s")
    for name, value in lab_secrets().items():
        assert value not in out, f"{name} in ansible-playbook -v output"
    second = host.check_output(f"readlink {BASE}/current")
    assert second != first
    assert host.check_output(f"readlink {BASE}/previous") == first

    _, out = ansible(PROJECT / "playbooks" / "rollback.yml", check=True)
    assert host.check_output(f"readlink {BASE}/current") == first
    assert host.check_output(f"readlink {BASE}/previous") == second
    assert host.service("litellm-gateway").is_running
    status, _, body, _ = chat(
        {"model": model_names()[0], "messages": [{"role": "user", "content": "after rollback"}]},
        key=lab_secrets()["litellm_master_key"])
    assert status == 200, body


def test_rollback_without_previous_fails_clearly(host):
    host.run(f"mv {BASE}/previous {BASE}/previous.gwtest")
    try:
        rc, out = ansible(PROJECT / "playbooks" / "rollback.yml")
    finally:
        host.run(f"mv {BASE}/previous.gwtest {BASE}/previous")
    assert rc != 0
    assert "No previous release to roll back to" in out


BAD_VARS = {
    "no_models": ({"litellm_gateway_models": []}, "litellm_gateway_models is empty"),
    "model_without_api_base": (
        {"litellm_gateway_models": [{"name": "m", "model": "openai/m", "api_key_env": "STUB_API_KEY",
                                     "input_cost_per_token": 0.1, "output_cost_per_token": 0.1}]},
        "api_base"),
    "bind_address_not_ip": ({"litellm_gateway_bind_address": "gateway.example"},
                            "litellm_gateway_bind_address must be an IPv4 or IPv6 address"),
    "log_payloads_unknown": ({"litellm_gateway_log_payloads": "everything"},
                             "litellm_gateway_log_payloads must be one of: full, redacted, metadata"),
}


@pytest.mark.parametrize("case", sorted(BAD_VARS))
def test_bad_variables_fail_before_any_change(host, gateway_play, tmp_path, case):
    extra, message = BAD_VARS[case]
    before = host.check_output(
        f"stat -c '%Y' {CONFIG} {ENV_FILE} /etc/systemd/system/{UNIT} && readlink {BASE}/current")
    ev = tmp_path / "bad.json"
    ev.write_text(json.dumps(extra))
    rc, out = ansible(gateway_play, "-e", f"@{ev}")
    assert rc != 0
    assert message in out, out[-2000:]
    r = play_recap(out, gw_name())
    assert r["failed"] == 1 and r["changed"] == 0
    after = host.check_output(
        f"stat -c '%Y' {CONFIG} {ENV_FILE} /etc/systemd/system/{UNIT} && readlink {BASE}/current")
    assert before == after
