"""validate.yml (from the repository root) against the converged bed: the evidence, its honesty, its secrecy.

Runs the real playbook (ansible-playbook with molecule's inventory) from the control node.
The honesty tests break the deployment in one way each, run validate.yml, and check that
the play fails and that exactly the matching criterion turns FAIL while every criterion is
still reported; each repairs what it broke and leaves the bed converged.

Every validate run starts from a bed without firing alerts (the break tests before it fire
some: the stopped gateway fires GatewayDown), so that only the break it makes can fail
monitoring_clean. Runtime: one validate run takes ~1 min on the bed; the module makes six.
"""

import json
import os
import subprocess
import threading
import time

import pytest
import testinfra

from alerting import wait_no_alert
from bedlib import (
    GATEWAY_CONFIG,
    GATEWAY_PORT,
    GATEWAY_PYTHON,
    GATEWAY_SCHEME,
    GATEWAY_TLS_CA,
    GATEWAY_SOCKET,
    GATEWAY_UNIT,
    PG_CONF_DIR,
    PG_UNIT,
    GATEWAY_URL,
    PROJECT,
    hosts_in,
    install_ca,
    lab_secrets,
    run_playbook,
)

CONTRACT = json.loads((PROJECT / "roles" / "validate" / "files" / "contract.json").read_text())
EVIDENCE_FILES = [*CONTRACT["evidence_files"]["card"], *CONTRACT["evidence_files"]["config"],
                  *CONTRACT["evidence_files"]["verdict"], CONTRACT["manifest"],
                  *CONTRACT["evidence_files"]["judged"], *CONTRACT["evidence_files"]["extra"]]
CRITERIA = {
    "gateway_active", "postgresql_active", "db_tls", "db_scram", "http_chat", "gateway_https", "request_rows",
    "response_rows", "join_integrity", "logging_delay", "pool_reuse", "backup_pitr", "monitoring_clean",
    "no_secrets",
}
CONFIG = GATEWAY_CONFIG
PG_HBA = f"{PG_CONF_DIR}/pg_hba.conf"
VENV_PY = GATEWAY_PYTHON


def bed_host(group):
    return testinfra.get_host(f"podman://{hosts_in(group)[0]}")


@pytest.fixture(scope="module")
def gw():
    return bed_host("litellm_gateway")


@pytest.fixture(scope="module")
def db():
    return bed_host("postgresql")


@pytest.fixture(scope="module")
def evidence_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("evidence")


class Played:
    """One validate.yml run: its exit code and output (the runner's (rc, out))."""

    def __init__(self, rc, out):
        self.returncode, self.output = rc, out


def run_validate(evidence_dir, *extra):
    """`ansible-playbook validate.yml -i <bed inventory>` from the repository root."""
    t0 = time.monotonic()
    rc, out = run_playbook("validate.yml", "-e", f"validate_evidence_dir={evidence_dir}", *extra)
    latest = evidence_dir / "latest"
    run_dir = latest.resolve() if latest.exists() else None
    summary = json.loads((run_dir / "summary.json").read_text()) if run_dir else None
    return Played(rc, out), run_dir, summary, time.monotonic() - t0


def results(summary):
    return {c["name"]: c["result"] for c in summary["criteria"]}


def assert_only_failed(proc, summary, expected):
    """The play failed, naming the failed criteria; every criterion is reported; the
    matching one(s) FAIL. Other criteria may fail only where listed as consequences."""
    out = proc.output
    assert proc.returncode != 0, "validate.yml passed on a broken deployment:\n" + out[-3000:]
    res = results(summary)
    assert set(res) == CRITERIA, f"criteria missing from the report: {CRITERIA - set(res)}"
    failed = {k for k, v in res.items() if v == "FAIL"}
    assert expected["must"] <= failed, f"expected FAIL {expected['must']}, got {res}"
    assert failed <= expected["must"] | expected.get("may", set()), f"unexpected FAIL: {res}"
    for name in expected["must"]:
        assert name in out, f"the play's failure message does not name {name}"


def wait_gateway_healthy(gw, timeout=120):
    """The gateway answers its liveliness probe on its private address again."""
    deadline = time.monotonic() + timeout
    addr = gw.run("hostname -I").stdout.split()[0]
    while time.monotonic() < deadline:
        if gw.run(f"curl -sf --cacert {GATEWAY_TLS_CA} -o /dev/null "
                  f"{GATEWAY_SCHEME}://{addr}:{GATEWAY_PORT}/health/liveliness").rc == 0:
            return
        time.sleep(2)
    pytest.fail("gateway did not become healthy after the repair")


def psql(db, sql):
    cmd = db.run("sudo -u postgres psql -v ON_ERROR_STOP=1 -d litellm_db -Atc %s", sql)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout


# ----------------------------------------------------------------- healthy bed

FOREIGN_CALLS = 3


def tag_the_run_from_another_key(evidence_dir, found, timeout=180):
    """A caller with the non-admin lab key learns the run's tag (here: from the run directory
    as soon as the play makes it) and sends calls carrying it. Tags are caller-chosen; the
    evidence must count only the play's own key and name these apart."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [d for d in evidence_dir.iterdir() if d.is_dir() and not d.is_symlink()]
        if runs:
            break
        time.sleep(0.2)
    else:
        return
    t = f"run:{runs[0].name}"
    db = hosts_in("postgresql")[0]
    ca = install_ca(db)
    subprocess.run(["podman", "exec", "-i", db, "sh", "-c", "umask 077; cat > /run/validate-test-team.hdr"],
                   input=f"Authorization: Bearer {lab_secrets()['litellm_team_key']}\n", text=True, check=True,
                   timeout=60)
    body = json.dumps({"model": "stub-small", "messages": [{"role": "user", "content": "not the play's call"}],
                       "metadata": {"tags": [t]}})
    for _ in range(FOREIGN_CALLS):
        p = subprocess.run(["podman", "exec", "-i", db, "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                            "--cacert", ca, "-H", "@/run/validate-test-team.hdr", "-H", "Content-Type: application/json",
                            "--data-binary", "@-", f"{GATEWAY_URL}/v1/chat/completions"],
                           input=body, capture_output=True, text=True, timeout=60, check=False)
        found.append(p.stdout)
    subprocess.run(["podman", "exec", db, "rm", "-f", "/run/validate-test-team.hdr"], timeout=60, check=False)


@pytest.fixture(scope="module")
def healthy_run(evidence_dir):
    foreign: list[str] = []
    wait_no_alert()
    intruder = threading.Thread(target=tag_the_run_from_another_key, args=(evidence_dir, foreign), daemon=True)
    intruder.start()
    proc, run_dir, summary, secs = run_validate(evidence_dir)
    intruder.join(timeout=120)
    print(f"validate.yml on the healthy bed: {secs:.0f} s, rc {proc.returncode}; calls of another key with the "
          f"run's tag: {foreign}")
    assert foreign == ["200"] * FOREIGN_CALLS, foreign
    return proc, run_dir, summary


def test_validate_passes_on_the_converged_bed(healthy_run):
    proc, run_dir, summary = healthy_run
    assert proc.returncode == 0, proc.output[-4000:]
    assert summary["verdict"] == "PASS", json.dumps(summary, indent=1)
    res = results(summary)
    assert set(res) == CRITERIA
    assert all(v in ("PASS", "INFO") for v in res.values()), res


@pytest.mark.parametrize("name", EVIDENCE_FILES)
def test_evidence_file_exists_and_is_not_empty(healthy_run, name):
    _, run_dir, _ = healthy_run
    path = run_dir / name
    assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty"


def test_no_secret_value_in_any_evidence_file(healthy_run):
    _, run_dir, _ = healthy_run
    secrets = lab_secrets()
    for path in run_dir.iterdir():
        text = path.read_text(errors="replace")
        for name, value in secrets.items():
            assert value not in text, f"{name} found in {path.name}"


def test_evidence_holds_the_real_figures(healthy_run):
    _, run_dir, _ = healthy_run
    chat = json.loads((run_dir / "chat_call.json").read_text())
    ex = chat["exchange"]
    assert ex["status"] == 200
    assert ex["request"]["headers"]["Authorization"] == "Bearer <redacted>"
    assert ex["usage"]["total_tokens"] > 0 and float(ex["response_cost"]) > 0
    join = json.loads((run_dir / "join_check.json").read_text())
    assert join["request_rows"] == join["response_rows"] == join["matched_pairs"] == 5
    # over HTTPS, the certificate verified against the bed CA, TLS 1.2 or newer
    assert ex["tls"]["scheme"] == "https" and ex["tls"]["cert_verified"] is True
    assert {c["tls_version"] for c in chat["calls"]} <= {"TLSv1.2", "TLSv1.3"}
    log = (run_dir / "gateway_db_connect.log").read_text()
    connect = [ln for ln in log.splitlines() if "event=connect " in ln]
    assert connect, log
    line = json.loads(connect[0].split("event=connect ", 1)[1])
    assert line["ssl"]["server_ssl"] is True and line["auth"]["method"].startswith("scram-sha-256")
    # the source address the server saw, and a fresh connection described the same way
    gw_addr = GATEWAY_URL.split("//", 1)[1].rsplit(":", 1)[0]
    assert line["client_addr"] == gw_addr
    fresh = [ln for ln in log.splitlines() if ln.startswith("event=connect_check ")]
    assert len(fresh) == 1, log
    fresh_line = json.loads(fresh[0].split(" ", 1)[1])
    assert fresh_line["connected"] is True and fresh_line["client_addr"] == gw_addr
    assert fresh_line["auth"]["system_user"].startswith("scram-sha-256:")
    crits = {c["name"]: c for c in json.loads((run_dir / "summary.json").read_text())["criteria"]}
    assert f"fresh connection from {hosts_in('litellm_gateway')[0]} ({gw_addr}): scram-sha-256" \
        in crits["db_scram"]["figure"]
    # the secret search covered every file, the summary's two included
    n_files = len([p for p in run_dir.iterdir() if p.is_file()])
    assert f"searched in all {n_files} files of the run directory" in crits["no_secrets"]["figure"]
    config = (run_dir / "config.redacted.yaml").read_text()
    assert "litellm_pglog.callback" in config
    status = (run_dir / "service_status.txt").read_text()
    assert f"unit={GATEWAY_UNIT}" in status and f"unit={PG_UNIT}" in status
    # the logging metrics as the monitoring host scraped them, after the play's calls
    snap = (run_dir / "metrics_snapshot.txt").read_text()
    gw = hosts_in("litellm_gateway")[0]
    assert f"### source=gateway host={gw} url=http://" in snap and " status=200" in snap, snap[:2000]
    written = [ln for ln in snap.splitlines() if ln.startswith("pglog_records_written_total ")]
    assert written and float(written[0].split()[1]) >= 5, snap[:2000]
    assert "### source=prometheus " in snap and "### source=alertmanager " in snap
    assert crits["monitoring_clean"]["result"] == "PASS", crits["monitoring_clean"]
    assert f"{gw}: " in crits["monitoring_clean"]["figure"] and "0 dropped, 0 rejected" in crits["monitoring_clean"]["figure"]


# -------------------------------------------------------- honesty: break, check, repair

def test_stopped_gateway_fails_gateway_active(gw, evidence_dir):
    wait_no_alert()
    # the socket too: while it listens, a connection starts the service again
    assert gw.run(f"systemctl stop {GATEWAY_SOCKET} {GATEWAY_UNIT}").rc == 0
    try:
        proc, _, summary, _ = run_validate(evidence_dir, "-e", "validate_row_timeout_s=4")
    finally:
        gw.run(f"systemctl start {GATEWAY_SOCKET} {GATEWAY_UNIT}")
        wait_gateway_healthy(gw)
    # no gateway: no HTTP(S) answer, so no TLS session, no rows and no metrics either
    assert_only_failed(proc, summary, {
        "must": {"gateway_active", "http_chat", "gateway_https", "request_rows", "response_rows",
                 "monitoring_clean"},
        "may": {"join_integrity", "logging_delay", "db_tls"}})


def test_removed_callback_fails_the_row_criteria(gw, evidence_dir):
    backup = CONFIG + ".validate-test"
    assert gw.run(f"cp -p {CONFIG} {backup}").rc == 0
    wait_no_alert()
    drop = ("import sys, yaml; p = sys.argv[1]; c = yaml.safe_load(open(p)); "
            "c.get('litellm_settings', {}).pop('callbacks', None); yaml.safe_dump(c, open(p, 'w'))")
    try:
        assert gw.run(f"{VENV_PY} -c %s {CONFIG}", drop).rc == 0
        assert gw.run(f"systemctl restart {GATEWAY_UNIT}").rc == 0
        wait_gateway_healthy(gw)
        proc, _, summary, _ = run_validate(evidence_dir, "-e", "validate_row_timeout_s=10")
    finally:
        gw.run(f"cp -p {backup} {CONFIG} && rm -f {backup}")
        gw.run(f"systemctl restart {GATEWAY_UNIT}")
        wait_gateway_healthy(gw)
    # the calls still answer 200; no logger, so no rows, no connection of the package and no
    # logging metrics (the package serves them)
    assert_only_failed(proc, summary, {
        "must": {"request_rows", "response_rows", "join_integrity", "logging_delay", "monitoring_clean"},
        "may": {"db_tls", "db_scram"}})
    assert results(summary)["http_chat"] == "PASS"


DROP_TRIGGER = """
DROP TRIGGER IF EXISTS validate_test_delete_response ON responses;
DROP FUNCTION IF EXISTS validate_test_delete_response();
"""


def test_deleted_response_row_fails_the_join(db, evidence_dir):
    # Deletes, right after its insert, the response row of the run's first call (its
    # prompt says "call 1 of"): the run ends with one request row without a response.
    # SECURITY DEFINER: the delete runs as postgres, the writer itself cannot delete.
    wait_no_alert()
    psql(db, DROP_TRIGGER + """
    CREATE FUNCTION validate_test_delete_response() RETURNS trigger LANGUAGE plpgsql
      SECURITY DEFINER SET search_path = public AS $f$
    BEGIN
      IF EXISTS (SELECT 1 FROM requests q WHERE q.id = NEW.request_id
                 AND q.payload::text LIKE '%call 1 of%') THEN
        DELETE FROM responses WHERE id = NEW.id;
      END IF;
      RETURN NULL;
    END $f$;
    CREATE TRIGGER validate_test_delete_response AFTER INSERT ON responses
      FOR EACH ROW EXECUTE FUNCTION validate_test_delete_response();
    """)
    try:
        proc, run_dir, summary, _ = run_validate(evidence_dir, "-e", "validate_row_timeout_s=10")
    finally:
        psql(db, DROP_TRIGGER)
    assert_only_failed(proc, summary, {"must": {"response_rows", "join_integrity"}})
    join = json.loads((run_dir / "join_check.json").read_text())
    assert join["requests_without_response"] == 1 and join["response_rows"] == 4


def test_md5_in_pg_hba_fails_db_scram(db, evidence_dir):
    wait_no_alert()
    backup = PG_HBA + ".validate-test"
    assert db.run(f"cp -p {PG_HBA} {backup}").rc == 0
    try:
        # the gateway's hostssl rule(s) switch to md5; the writer's SCRAM verifier still
        # lets it log in (PostgreSQL then runs SCRAM), so only the rule in force shows it
        assert db.run(f"sed -i -E '/^hostssl/ s/scram-sha-256/md5/' {PG_HBA}").rc == 0
        assert "md5" in db.run(f"grep ^hostssl {PG_HBA}").stdout
        assert db.run(f"systemctl reload {PG_UNIT}").rc == 0
        proc, _, summary, _ = run_validate(evidence_dir)
    finally:
        db.run(f"cp -p {backup} {PG_HBA} && rm -f {backup}")
        db.run(f"systemctl reload {PG_UNIT}")
    assert_only_failed(proc, summary, {"must": {"db_scram"}})
    crit = next(c for c in summary["criteria"] if c["name"] == "db_scram")
    assert "md5" in crit["figure"]


def test_rows_another_key_tagged_with_the_run_are_named_not_counted(healthy_run):
    """The intruder's calls carried the run's tag: the evidence counted the play's key only,
    and says how many rows of the tag came from other keys."""
    _, run_dir, summary = healthy_run
    join = json.loads((run_dir / "join_check.json").read_text())
    assert join["other_key_rows"] == FOREIGN_CALLS and join["request_rows"] == 5, join
    assert join["key_hash12"].startswith("h1:")
    crit = next(c for c in summary["criteria"] if c["name"] == "request_rows")
    assert crit["result"] == "PASS" and f"{FOREIGN_CALLS} rows of the tag made with other keys" in crit["figure"]
    assert "not counted" in (run_dir / "requests_head.txt").read_text()


def test_a_run_from_elsewhere_lands_in_the_root_evidence_dir(tmp_path, healthy_run):
    """`ansible-playbook /path/to/validate.yml` started in another directory, without
    validate_evidence_dir: the run goes to evidence/ at the repository root and latest
    follows it; the earlier run is kept."""
    _, first_dir, _ = healthy_run
    time.sleep(1.1)  # run ids have a resolution of one second
    wait_no_alert()
    rc, out = run_playbook(PROJECT / "validate.yml", cwd=tmp_path)
    assert rc == 0, out[-3000:]
    root = PROJECT / "evidence"
    second_dir = (root / "latest").resolve()
    assert second_dir.parent == root and second_dir.is_dir() and first_dir.is_dir()
    assert second_dir.name > first_dir.name
    assert os.readlink(root / "latest") == second_dir.name
    assert json.loads((second_dir / "summary.json").read_text())["verdict"] == "PASS"
    assert not (tmp_path / "evidence").exists()
