"""Issue 11 on the bed: what a hostile caller sends over the network, and the auditors.

Every call is made from the db host (a client on the bed network) over HTTPS with the bed's
CA, by molecule/shared/hostile.py (keys and CA on stdin); rows are read back with the
package's CLI and, where a whole-row search is needed, with psql as postgres on the db host.
Findings covered (the host-side twins are in tests/test_security_e2e.py):
  4/5  every route of LiteLLM's own table (dumped from the deployed venv): no key -> 401
       except liveness; the non-admin lab key -> 403 except the inference routes
  5    no answer carries an internal header (upstream URL, versions, provider headers)
  3    a wrong key of `openssl rand -hex 32` shape -> 401, stored only as a hash
  1    a reused x-litellm-call-id: every call keeps its rows
  2    a cut stream and a non-streaming hang-up: client_disconnected
  6    NaN, 5000-deep and oversize bodies: 400/413, each with its rows
  8    TLS 1.2+ only, no plain HTTP, the certificate verifies with the bed's CA only
Auditors: systemd-analyze security per unit the bundle installs, lynis in both hosts
(hardening index printed), a bounded schemathesis fuzz pass of the chat route.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from bedlib import (
    ADDRESSES,
    CLIENT_CA,
    GATEWAY_ENV_FILE,
    GATEWAY_PYTHON,
    GATEWAY_TLS_CA,
    GATEWAY_UNIT,
    GATEWAY_URL,
    LAB_CA,
    PGLOG_CLI,
    PROJECT,
    hosts_in,
    install_ca,
    inventory_vars,
    lab_secrets,
)

GW, DB = hosts_in("litellm_gateway")[0], hosts_in("postgresql")[0]
SHARED = Path(__file__).resolve().parents[2] / "shared"
SCRIPT = "/usr/local/lib/pglog-test/hostile.py"

# The policy as the issue states it (the package's auth.INFERENCE_ROUTES must equal it).
INFERENCE = {(m, p + r) for p in ("/v1", "") for m, r in (
    ("POST", "/chat/completions"), ("POST", "/completions"), ("POST", "/embeddings"), ("GET", "/models"))}
LIVENESS = {("GET", "/health/liveliness"), ("HEAD", "/health/liveliness")}
# spellings that are not the allowed routes, and paths that are no route at all
EXTRA = [["GET", "/no/such/route"], ["POST", "/v1/chat/completions/"], ["POST", "//v1/chat/completions"],
         ["POST", "/V1/chat/completions"], ["GET", "/v1/chat/completions"], ["DELETE", "/v1/models"]]


def sh(container: str, cmd: str, *, stdin: str | None = None, timeout: float = 120,
       check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["podman", "exec", "-i", container, "sh", "-c", cmd], input=stdin, capture_output=True,
                       text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"[{container}] {cmd[:200]!r} exited {p.returncode}: {p.stderr[-1500:]}")
    return p


def model() -> str:
    return inventory_vars(GW)["litellm_gateway_models"][0]["name"]


def tag() -> str:
    return f"run:sec-{uuid.uuid4().hex[:10]}"


def body(content: str, t: str, **extra) -> dict:
    return {"model": model(), "messages": [{"role": "user", "content": content}], "metadata": {"tags": [t]}, **extra}


@pytest.fixture(scope="module")
def client():
    """hostile.py and the bed CA on the db host; returns run(what, request) -> JSON answer."""
    sh(DB, f"mkdir -p {os.path.dirname(SCRIPT)}")
    subprocess.run(["podman", "cp", str(SHARED / "hostile.py"), f"{DB}:{SCRIPT}"], check=True, timeout=60)
    install_ca(DB)
    ca = LAB_CA.read_text()

    def run(what: str, req: dict, timeout: float = 300) -> dict:
        req = {"base": GATEWAY_URL, "ca": ca, **req}
        return json.loads(sh(DB, f"python3 {SCRIPT} {what}", stdin=json.dumps(req), timeout=timeout).stdout)

    return run


def psql(sql: str) -> str:
    """As postgres on the db host (the search must see every row, which the writer may)."""
    return sh(DB, "sudo -u postgres psql -v ON_ERROR_STOP=1 -d litellm_db -At", stdin=sql).stdout.strip()


def sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def evidence(what: str, t: str, *extra: str) -> dict:
    out = sh(GW, f"set -a; . {GATEWAY_ENV_FILE}; set +a; exec {PGLOG_CLI} evidence {what} --tag '{t}' --json "
                 + " ".join(extra))
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_rows(t: str, n: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        jc = evidence("join-check", t, "--expected", str(n))
        if jc["matched_pairs"] >= n or time.monotonic() > deadline:
            return jc
        time.sleep(0.5)


def key_hashes(key: str) -> tuple[str, str]:
    """The two values a key may be stored as (records.key_hash of what LiteLLM reports for a
    refused key; stored_key_hash for an accepted one), computed by the deployed package."""
    out = sh(GW, f"{GATEWAY_PYTHON} -c 'import sys; from litellm_pglog import records; k = sys.stdin.read();"
                 " print(records.key_hash(k)); print(records.stored_key_hash(k))'", stdin=key)
    a, b = out.stdout.split()
    return a, b


# ------------------------------------------------------------- findings 4 and 5: routes

@pytest.fixture(scope="module")
def route_table():
    """LiteLLM's own route table, from the deployed gateway venv (not a hand list)."""
    script = (SHARED / "hostile.py").read_text()
    out = sh(GW, f"cd /tmp && LITELLM_LOCAL_MODEL_COST_MAP=True {GATEWAY_PYTHON} - dump", stdin=script, timeout=300)
    found = json.loads(out.stdout)
    assert len(found) > 900, len(found)
    return found


def test_every_route_needs_a_key_and_the_team_key_reaches_only_inference(client, route_table):
    keys = lab_secrets()
    t0 = time.monotonic()
    res = client("routes", {"routes": route_table, "extra": EXTRA,
                            "keys": {"none": None, "team": keys["litellm_team_key"]}}, timeout=600)
    secs = time.monotonic() - t0
    wrong, allowed_seen = [], set()
    for method, path, label, status, leaked in res["answers"]:
        live = (method, path) in LIVENESS
        if leaked:
            wrong.append((method, path, label, "internal headers", leaked))
        if label == "none" and status != (200 if live else 401):
            wrong.append((method, path, label, status))
        if label == "team":
            if (method, path) in INFERENCE or live:
                allowed_seen.add((method, path))
                if status in (401, 403) or not isinstance(status, int):
                    wrong.append((method, path, "team key refused", status))
            elif status != 403:
                wrong.append((method, path, label, status))
    print(f"{len(res['answers'])} route probes ({len(res['answers']) // 2} (method, path) x no key / team key) "
          f"and {len(res['websockets'])} websocket handshakes in {secs:.0f} s")
    assert not wrong, wrong[:30]
    assert len(res["answers"]) > 2000
    assert allowed_seen >= INFERENCE  # every allowed route is in LiteLLM's table and was answered
    assert res["websockets"] and all(status == 403 for _, _, status in res["websockets"]), res["websockets"]


def test_master_key_reaches_admin_routes(client):
    """The probe can see a 200: the same paths with the master key are served."""
    key = lab_secrets()["litellm_master_key"]
    res = client("routes", {"routes": [{"path": p, "methods": ["GET"], "kind": "http"}
                                       for p in ("/routes", "/model/info", "/openapi.json")],
                            "keys": {"master": key}})
    assert {(p, s) for _, p, _, s, _ in res["answers"]} == {("/routes", 200), ("/model/info", 200),
                                                            ("/openapi.json", 200)}


def test_answers_carry_no_internal_headers(client):
    key = lab_secrets()["litellm_team_key"]
    t = tag()
    for extra, want in (({}, 200), ({"stream": True}, 200)):
        ans = client("raw", {"key": key, "path": "/v1/chat/completions",
                             "body": json.dumps(body("headers please", t, **extra))})
        assert ans["status"] == want, ans
        head = ans["head"].lower()
        assert "x-litellm-call-id:" in head
        leaked = [h for h in ("x-litellm-model-api-base", "x-litellm-version", "x-litellm-model-id",
                              "x-litellm-key-spend", "llm_provider-") if h in head]
        assert not leaked, ans["head"]


# ------------------------------------------------------------- finding 3: raw keys

def test_wrong_key_of_openssl_hex_shape_is_401_and_never_stored_raw(client):
    # the key is made on the client with openssl, as an operator's would be; it only ever
    # travels on stdin and in the request's header
    key = sh(DB, "openssl rand -hex 32").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    t = tag()
    ans = client("raw", {"key": key, "path": "/v1/chat/completions", "body": json.dumps(body("wrong key", t))})
    assert ans["status"] == 401, ans
    hashes = key_hashes(key)
    deadline = time.monotonic() + 20
    while int(psql(f"SELECT count(*) FROM requests WHERE api_key_hash IN ({sql_text(hashes[0])}, "
                   f"{sql_text(hashes[1])})")) < 1:
        assert time.monotonic() < deadline, "the refused call was not logged under a hash of its key"
        time.sleep(0.5)
    # the whole of every row, requests and responses, never holds the key
    raw_hits = psql(f"SELECT count(*) FROM requests q LEFT JOIN responses r ON r.request_id = q.id "
                    f"WHERE strpos(lower(q::text), {sql_text(key)}) > 0 OR strpos(lower(r::text), {sql_text(key)}) > 0")
    assert raw_hits == "0"
    assert psql("SELECT count(*) FROM requests WHERE api_key_hash <> '' AND api_key_hash NOT LIKE 'h1:%'") == "0"


# ------------------------------------------------------------- finding 1: caller call ids

def test_reused_call_ids_keep_every_calls_rows(client):
    key = lab_secrets()["litellm_team_key"]
    t = tag()
    same = f"sec-fixed-{uuid.uuid4().hex}"
    ids = [same] * 4 + ["P" * 64 + "-first", "P" * 64 + "-second"]
    for i, call_id in enumerate(ids):
        ans = client("raw", {"key": key, "path": "/v1/chat/completions", "headers": {"x-litellm-call-id": call_id},
                             "body": json.dumps(body(f"call {i}", t))})
        assert ans["status"] == 200, ans
    jc = wait_rows(t, len(ids))
    assert (jc["request_rows"], jc["response_rows"], jc["matched_pairs"], jc["integrity_pct"]) == (6, 6, 6, 100.0), jc
    assert jc["duplicate_call_ids"] == 3  # information: the 4 repeats each kept their pair
    stored = sorted(r["call_id"] for r in evidence("requests-head", t)["rows"])
    assert stored == sorted(ids)


# ------------------------------------------------------------- finding 2: disconnects

def test_hang_ups_are_stored_as_client_disconnected(client):
    key = lab_secrets()["litellm_team_key"]
    t = tag()
    words = "one two three four five six seven eight nine ten"
    cut = client("hangup", {"key": key, "path": "/v1/chat/completions", "after_events": 2,
                            "body": body(f"cut {words} #stub:chunk_ms=300", t, stream=True)})
    assert " 200 " in cut["status_line"], cut
    early = client("hangup", {"key": key, "path": "/v1/chat/completions", "after_s": 0.5,
                              "body": body("wait #stub:sleep=3000", t)})
    assert early["received"] == 0, early
    ans = client("raw", {"key": key, "path": "/v1/chat/completions", "body": json.dumps(body("stays", t))})
    assert ans["status"] == 200
    wait_rows(t, 3, timeout=30)
    head = evidence("responses-head", t)
    assert head["by_status"].get("client_disconnected", {}).get("responses") == 2, head["by_status"]
    assert head["by_status"].get("success", {}).get("responses") == 1, head["by_status"]


# ------------------------------------------------------------- finding 6: hostile bodies

def test_hostile_bodies_get_400_or_413_and_keep_their_rows(client):
    key = lab_secrets()["litellm_team_key"]
    t = tag()
    since = psql("SELECT now()")
    base = json.dumps(body("hostile", t))[:-1]  # without the closing brace
    cases = {
        "nan": (base + ', "temperature": NaN}', None, 400),
        "deep": (base + ', "x": ' + "[" * 5000 + "]" * 5000 + "}", None, 400),
        # declared larger than the 1 MiB limit: refused before the body is read
        "oversize": (base + "}", 2 * 1024 * 1024 + 7, 413),
    }
    for name, (raw, declared, want) in cases.items():
        ans = client("raw", {"key": key, "path": "/v1/chat/completions", "body": raw, "declare_length": declared})
        assert ans["status"] == want, (name, ans)
    team = key_hashes(key)[1]
    deadline = time.monotonic() + 20
    while True:
        rows = psql(f"""SELECT r.status || ' ' || (r.body->'error'->>'error_code')
                        FROM requests q JOIN responses r ON r.request_id = q.id
                        WHERE q.api_key_hash = {sql_text(team)} AND q.created_at >= {sql_text(since)}::timestamptz
                          AND (q.payload->'refused_request'->>'body_head' LIKE {sql_text('%' + t + '%')}
                               OR r.body->'error'->>'error_code' = '413')
                        ORDER BY 1""").splitlines()
        if len(rows) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rows == ["failure 400", "failure 400", "failure 413"], rows


# ------------------------------------------------------------- finding 8: HTTPS

def test_gateway_speaks_tls_1_2_and_newer_only_with_a_certificate_of_the_bed_ca():
    host, port = ADDRESSES["gateway"], GATEWAY_URL.rsplit(":", 1)[1]
    probe = (f"echo | timeout 20 openssl s_client -connect {host}:{port} -servername {host} "
             f"-verify_return_error -CAfile {CLIENT_CA} {{}} 2>&1")
    ok12 = sh(DB, probe.format("-tls1_2"), check=False)
    ok13 = sh(DB, probe.format("-tls1_3"), check=False)
    # the client must be allowed to offer TLS 1.1 (OpenSSL 3's default security level refuses
    # it on the client side, which would prove nothing about the server)
    old = sh(DB, probe.format("-tls1_1 -cipher DEFAULT:@SECLEVEL=0"), check=False)
    # "New, <version>, Cipher is <cipher>": the handshake's outcome
    assert re.search(r"^New, TLSv1\.2, Cipher is ECDHE-", ok12.stdout, re.M), ok12.stdout[-800:]
    assert re.search(r"^New, TLSv1\.3, Cipher is TLS_", ok13.stdout, re.M), ok13.stdout[-800:]
    assert "Verify return code: 0 (ok)" in ok12.stdout + ok13.stdout
    assert "CONNECTED" in old.stdout and "no protocols available" not in old.stdout, old.stdout[-800:]
    assert "New, (NONE), Cipher is (NONE)" in old.stdout, old.stdout[-800:]
    # the name in the certificate: the bed address verifies, a name it does not hold does not
    curl = f"curl -sS -o /dev/null -w '%{{http_code}}' --max-time 20"
    assert sh(DB, f"{curl} --cacert {CLIENT_CA} {GATEWAY_URL}/health/liveliness").stdout == "200"
    assert sh(DB, f"{curl} --cacert {CLIENT_CA} --resolve wrong.example:{port}:{host} "
                  f"https://wrong.example:{port}/health/liveliness", check=False).returncode != 0
    # without the bed CA (the system's trust store) the certificate does not verify
    assert sh(DB, f"{curl} {GATEWAY_URL}/health/liveliness", check=False).returncode != 0
    # no plain HTTP on the port
    plain = sh(DB, f"{curl} http://{host}:{port}/health/liveliness", check=False)
    assert plain.stdout != "200"


def test_gateway_key_and_certificate_files():
    out = sh(GW, f"stat -c '%a %U %G %n' {GATEWAY_TLS_CA} $(dirname {GATEWAY_TLS_CA})/gateway.key "
                 f"$(dirname {GATEWAY_TLS_CA})/gateway.crt").stdout.split("\n")
    modes = {line.split()[-1].rsplit("/", 1)[1]: line.split()[:3] for line in out if line}
    assert modes["gateway.key"] == ["640", "root", "litellm-gateway"]
    assert modes["gateway.crt"][0] == "644" and modes["ca.crt"][0] == "644"
    env = sh(GW, f"systemctl show -p Environment --value {GATEWAY_UNIT}").stdout
    assert "SSL_CERTFILE_PATH=" in env and "SSL_KEYFILE_PATH=" in env
    # the health checks of the role verify the certificate (the role's files say so)
    health = (PROJECT / "roles" / "litellm_gateway" / "tasks" / "health.yml").read_text()
    assert health.count("ca_path:") == 2 and "validate_certs: false" not in health


# ------------------------------------------------------------- auditors: systemd-analyze

# The units the bundle installs and the highest exposure each may have (systemd-analyze
# security, 0 = fully sandboxed .. 10). A unit that loses a protection fails here.
# Measured on the bed (systemd 257, trixie): gateway 1.1, stub 1.1, backup 0.2.
UNIT_EXPOSURE = {
    ("litellm_gateway", GATEWAY_UNIT): 1.5,
    ("upstream_stub", "upstream-stub.service"): 1.5,
    ("postgresql", "postgresql-backup.service"): 1.0,
    ("postgresql", "pglog-partitions.service"): 1.0,
    ("postgresql", "pglog-rollup.service"): 1.0,
}


@pytest.mark.parametrize("group,unit", sorted(UNIT_EXPOSURE), ids=[u for _, u in sorted(UNIT_EXPOSURE)])
def test_systemd_exposure_of_every_unit_the_bundle_installs(group, unit):
    name = hosts_in(group)[0]
    out = sh(name, f"systemd-analyze security --no-pager {unit}").stdout
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", out)
    assert m, out[-500:]
    exposure = float(m.group(1))
    print(f"systemd-analyze security {unit} on {name}: exposure {exposure} (threshold {UNIT_EXPOSURE[(group, unit)]})")
    assert exposure <= UNIT_EXPOSURE[(group, unit)], out


# ------------------------------------------------------------- auditors: lynis

# Hardening index floor per host group (lynis 3 from trixie, `lynis audit system --quick`).
LYNIS_FLOOR = {"postgresql": 60, "litellm_gateway": 60}
LYNIS_OUT = "/root/lynis-audit.txt"


@pytest.fixture(scope="module", autouse=True)
def lynis_runs():
    """Starts lynis in both hosts when the module starts (a run takes one to two minutes), so
    it works while the other tests of the module run; its tests, near the end, wait for it."""
    procs = {}
    for group in LYNIS_FLOOR:
        name = hosts_in(group)[0]
        # the report goes to a file in the host (a pipe nobody reads while the other host's
        # test waits would stall lynis)
        cmd = ("command -v lynis >/dev/null || (apt-get -qq update && DEBIAN_FRONTEND=noninteractive "
               "apt-get -qq install -y lynis >/dev/null); "
               f"lynis audit system --quick --no-colors --no-log > {LYNIS_OUT} 2>&1")
        procs[group] = (name, subprocess.Popen(["podman", "exec", name, "sh", "-c", cmd], stdout=subprocess.DEVNULL,
                                               stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.parametrize("group", sorted(LYNIS_FLOOR))
def test_lynis_hardening_index(lynis_runs, group):
    name, proc = lynis_runs[group]
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    out = sh(name, f"cat {LYNIS_OUT}").stdout
    m = re.search(r"Hardening index : (\d+)", out)
    assert m, out[-2000:]
    index = int(m.group(1))
    tests = re.search(r"Tests performed : (\d+)", out)
    warnings = re.findall(r"^\s*! (.+)$", out, re.M)
    print(f"lynis on {name} ({group}): hardening index {index}, tests {tests.group(1) if tests else '?'}, "
          f"warnings: {warnings}")
    assert index >= LYNIS_FLOOR[group], out[-3000:]


# ------------------------------------------------------------- auditors: fuzz

FUZZ_EXAMPLES, FUZZ_SECONDS = 150, 60


def test_fuzz_pass_of_the_chat_route():
    """schemathesis from the control node (audit venv) over HTTPS with the master key: no 5xx,
    and every answered call has its request and response row (found by its call id)."""
    python = PROJECT / ".venv-audit" / "bin" / "python"
    assert python.exists(), "the audit venv is missing: make venvs"
    p = subprocess.run([str(python), str(SHARED / "fuzz.py"), "--base", GATEWAY_URL, "--ca-file", str(LAB_CA),
                        "--max-examples", str(FUZZ_EXAMPLES), "--max-seconds", str(FUZZ_SECONDS),
                        "--model", model()],
                       input=lab_secrets()["litellm_master_key"] + "\n", capture_output=True, text=True,
                       timeout=FUZZ_SECONDS + 240, check=False)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads(p.stdout)
    print(f"fuzz: {res['calls']} calls in {res['seconds']} s, statuses {res['statuses']}, "
          f"{res['without_call_id']} without call id, {res['client_errors']} not sent "
          f"({res.get('client_error_kinds', {})})")
    assert res["calls"] >= 20
    assert not res["server_errors"], res["server_errors"][:5]
    ids = sorted(set(res["call_ids"]))
    assert ids and res["without_call_id"] == 0
    array = "ARRAY[" + ",".join(sql_text(i) for i in ids) + "]::text[]"
    deadline = time.monotonic() + 30
    while True:
        missing = psql(f"""SELECT count(*) FROM unnest({array}) AS c(id)
                           WHERE NOT EXISTS (SELECT 1 FROM requests q JOIN responses r ON r.request_id = q.id
                                             WHERE q.call_id = c.id)""")
        if missing == "0" or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert missing == "0", f"{missing} of {len(ids)} answered fuzz calls have no request+response rows"
