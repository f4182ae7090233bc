"""Unit tests of the validation verdict and the evidence scrubber (roles/validate/files/).

The verdict is computed from the files of a run directory only, so these tests fabricate
run directories: one healthy, then each with one defect, and check that exactly the
matching criterion turns FAIL while the others keep being reported.
"""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

import scrub
import verdict
import write_evidence

K = 5
SECRETS = ["writer-pw-0123456789", "sk-master-abcdefghijkl", "owner-pw-9876543210"]

CONNECT = {
    "auth": {"channel_binding": "require", "method": "scram-sha-256", "password_used": True,
             "system_user": "scram-sha-256:litellm_writer", "user": "litellm_writer"},
    "backend_pid": 4242,
    "client_addr": "10.89.71.18", "client_port": 40112, "server_addr": "10.89.71.19",
    "dsn": "postgresql+psycopg2://litellm_writer:***@10.89.71.19:5432/litellm_db?sslmode=verify-full",
    "pool": {"max_overflow": 2, "pool_pre_ping": True, "pool_recycle_s": 1800, "pool_size": 5},
    "server_version": "17.12 (Debian 17.12-0+deb13u1)",
    "ssl": {"bits": 256, "cipher": "TLS_AES_256_GCM_SHA384", "client_protocol": "TLSv1.3",
            "client_ssl_in_use": True, "server_ssl": True, "sslmode": "verify-full", "version": "TLSv1.3"},
}
# a fresh connection opened by the play (litellm-pglog connect-check), as the file shows it
FRESH = {**copy.deepcopy(CONNECT), "connected": True, "backend_pid": 5151, "client_port": 40200}
POOL = {"pid": 99, "online": True, "counters": {"inserted": 5},
        "pool": {"checkouts": 40, "connects": 2, "invalidated": 0, "reuse_rate": 0.95}}
HBA = [
    {"line_number": 1, "type": "local", "database": ["all"], "user_name": ["postgres"],
     "address": None, "netmask": None, "auth_method": "peer", "error": None},
    {"line_number": 2, "type": "hostssl", "database": ["litellm_db"], "user_name": ["litellm_writer"],
     "address": "10.89.71.18", "netmask": "255.255.255.255", "auth_method": "scram-sha-256", "error": None},
]


GW_UNIT, PG_UNIT = "litellm-gateway.service", "postgresql@17-main.service"


def manifest(pg_unit=PG_UNIT, gw_unit=GW_UNIT, calls=K) -> dict:
    """run.json as the play writes it: what the verdict judges against."""
    return {"run_id": "20261127T030000Z", "tag": "run:20261127T030000Z", "expected_calls": calls,
            "max_logging_delay_ms": 1000, "units": {"litellm_gateway": gw_unit, "postgresql": pg_unit},
            "expected_units": {"gateway": [gw_unit], "db": [pg_unit]}}


def service_status(gw_state=("active", "running"), pg_unit=PG_UNIT) -> str:
    return (
        f"### host=gateway unit={GW_UNIT}\n"
        f"$ systemctl show ...\nActiveState={gw_state[0]}\nSubState={gw_state[1]}\nMainPID=123\n"
        "NRestarts=0\n$ systemctl status\n  Active: active (running)\n"
        f"### host=db unit={pg_unit}\n"
        "ActiveState=active\nSubState=running\nMainPID=77\nNRestarts=0\n"
    )


def connect_log(connects=(CONNECT,), pools=(POOL,), fresh=FRESH) -> str:
    lines = ["### host=gateway unit=litellm-gateway.service since=Fri 2026-11-27 03:00:00 UTC"]
    lines += [f"2026-11-27 03:00:01 INFO litellm_pglog event=connect {json.dumps(c, sort_keys=True)}" for c in connects]
    lines += [f"event=pool_stats {json.dumps(p, sort_keys=True)}" for p in pools]
    lines += ["### host=gateway check=connect-check", "$ systemd-run ... litellm-pglog connect-check   (exit 0)"]
    lines += [f"event=connect_check {json.dumps(fresh, sort_keys=True)}"] if fresh is not None else []
    return "\n".join(lines) + "\n"


def chat(status=200, cost="0.000123", tokens=30, n=K, url="https://10.89.71.18:4000/v1/chat/completions",
         tls_version="TLSv1.3", verified=True) -> dict:
    calls = [{"url": url, "status": status, "latency_ms": 20.0 + i, "call_id": f"c{i}", "prompt_tokens": 10,
              "completion_tokens": tokens - 10, "total_tokens": tokens, "response_cost": cost,
              "tls_version": tls_version, "tls_cipher": "TLS_AES_256_GCM_SHA384" if tls_version else None,
              "cert_verified": verified, "t_end_epoch": 1.0} for i in range(n)]
    return {"exchange": {"status": status, "latency_ms": 20.0, "response_cost": cost,
                         "usage": {"prompt_tokens": 10, "completion_tokens": tokens - 10, "total_tokens": tokens},
                         "request": {"headers": {"Authorization": "Bearer <redacted>"}}},
            "calls": calls}


KEY12 = "h1:0a1b2c3d4"  # the CLI's key filter (first 12 characters of the play key's stored hash)


def join(**over) -> dict:
    d = {"tag": "run:x", "key_hash12": KEY12, "other_key_rows": 0, "expected_calls": K, "request_rows": K, "response_rows": K, "matched_pairs": K,
         "requests_without_response": 0, "requests_with_several_responses": 0,
         "responses_without_request": 0, "duplicate_call_ids": 0, "integrity_pct": 100.0,
         "delay_p50_ms": 190.0, "delay_p99_ms": 205.0, "delay_max_ms": 210.0}
    d.update(over)
    return d


def req_head(n=K, ids=None, key12=KEY12) -> dict:
    ids = ids if ids is not None else [f"c{i}" for i in range(n)]
    return {"tag": "run:x", "key_hash12": key12, "other_key_rows": 0, "count": len(ids), "columns": ["id", "call_id"],
            "rows": [{"id": i + 1, "call_id": c} for i, c in enumerate(ids)]}


def resp_head(n=K, tokens=30, cost=0.000123, status="success", key12=KEY12) -> dict:
    rows = [{"id": i + 1, "request_id": i + 1, "call_id": f"c{i}", "status": status, "prompt_tokens": 10,
             "completion_tokens": tokens - 10, "total_tokens": tokens, "cost_usd": cost} for i in range(n)]
    return {"tag": "run:x", "key_hash12": key12, "other_key_rows": 0, "count": n, "columns": [], "rows": rows,
            "totals": {"responses": n, "success": n, "failure": 0, "total_tokens": tokens * n, "cost_usd": cost * n},
            "by_status": {status: {"responses": n, "total_tokens": tokens * n, "cost_usd": cost * n}} if n else {}}


def auth(**over) -> dict:
    d = {"database": "litellm_db", "writer_role": "litellm_writer", "gateway_addresses": ["10.89.71.18"],
         "hba_rules": copy.deepcopy(HBA), "writer_verifier": "SCRAM-SHA-256",
         "writer_backends": [{"pid": 4242, "ssl": True, "client_addr": "10.89.71.18"}]}
    d.update(over)
    return d


NOW = 1796000000  # collected_at of the fabricated runs (a Wednesday, 2026-11-25)


def _calendar(first: int, step: int, n: int = 12) -> str:
    """`TZ=UTC systemd-analyze calendar --iterations=n` output for elapses first + k*step."""
    import datetime as dt
    stamp = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%a %Y-%m-%d %H:%M:%S UTC")  # noqa: E731
    lines = ["  Original form: x", "Normalized form: x", f"    Next elapse: {stamp(first)}", "       From now: soon"]
    lines += [f"   Iteration #{k + 1}: {stamp(first + k * step)}" for k in range(1, n)]
    return "\n".join(lines) + "\n"


def backup_info(backups=None, status=0, check_rc=0, timers=None, archiver=None, **over) -> dict:
    """pgbackrest_info.json of a healthy deployment: a full 2 days old, a diff 3 h old,
    weekly full + daily diff timers (10 min randomized delay), check passed."""
    if backups is None:
        backups = [{"label": "20261123-011500F", "type": "full", "error": False,
                    "timestamp": {"start": NOW - 2 * 86400 - 60, "stop": NOW - 2 * 86400}},
                   {"label": "20261123-011500F_20261125-011500D", "type": "diff", "error": False,
                    "timestamp": {"start": NOW - 3 * 3600 - 30, "stop": NOW - 3 * 3600}}]
    day, week = 86400, 7 * 86400
    if timers is None:
        timers = [
            {"type": "full", "unit": "pgbackrest-backup-full.timer",
             "show": {"ActiveState": "active", "UnitFileState": "enabled", "RandomizedDelayUSec": "10min",
                      "TimersCalendar": "{ OnCalendar=Sun *-*-* 01:15:00 ; next_elapse=... }"},
             "calendar_analysis": _calendar(NOW + 4 * day, week)},
            # Mon..Sat: a 48 h gap over Sunday on its own; the full fills it
            {"type": "diff", "unit": "pgbackrest-backup-diff.timer",
             "show": {"ActiveState": "active", "UnitFileState": "enabled", "RandomizedDelayUSec": "10min",
                      "TimersCalendar": "{ OnCalendar=Mon..Sat *-*-* 01:15:00 ; next_elapse=... }"},
             "calendar_analysis": "\n".join(_calendar(NOW + d * day, week, 3) for d in (1, 2, 3, 5, 6, 7))},
        ]
    d = {"repository_hosts": ["gateway"], "host": "gateway", "stanza": "pglog", "collected_at": NOW,
         "grace_s": 7200, "info_rc": 0, "info_stderr": "",
         "info": [{"name": "pglog", "status": {"code": status, "message": "ok" if status == 0 else "error"},
                   "backup": backups, "cipher": "aes-256-cbc"}],
         "check": {"rc": check_rc, "output": "" if check_rc == 0 else "ERROR: [082]: WAL segment was not archived"},
         "timers": timers,
         "archiver": archiver if archiver is not None else {
             "archive_mode": "on", "archived_count": 42, "failed_count": 0, "last_archived_wal": "000000010000000000000042",
             "last_archived_epoch": NOW - 30, "last_failed_wal": None, "last_failed_epoch": None},
         "archiver_error": ""}
    d.update(over)
    return d


def exposition(written=K, dropped=0, rejected=0) -> str:
    """A gateway's metrics endpoint, as the real logging module's Metrics renders it."""
    from prometheus_client import generate_latest

    from litellm_pglog.metrics import Metrics
    mx = Metrics(multiprocess=False)
    mx.publish({"enqueued": written + dropped + rejected, "written": written, "dropped": dropped,
                "failed": rejected}, lambda: {"writer_online": 1.0}, force=True)
    return "# HELP python_info x\npython_info{version=\"3\"} 1.0\n" + generate_latest(mx.registry).decode()


def prom_alerts(*alerts) -> str:
    """Prometheus /api/v1/alerts: (name, state) pairs."""
    return json.dumps({"status": "success", "data": {"alerts": [
        {"labels": {"alertname": n, "severity": "critical"}, "annotations": {}, "state": st,
         "activeAt": "2026-12-02T10:00:00Z", "value": "1e+00"} for n, st in alerts]}})


def am_alerts(*names) -> str:
    """Alertmanager /api/v2/alerts?active=true...: active alerts by name."""
    return json.dumps([{"labels": {"alertname": n}, "annotations": {}, "startsAt": "2026-12-02T10:00:00Z",
                        "status": {"state": "active", "silencedBy": [], "inhibitedBy": []}} for n in names])


def monitoring(gw_status=200, gw_content=None, prom=None, am=None, prom_status=200, am_status=200) -> dict:
    """What the play's monitoring stage collects (roles/validate/tasks/monitoring.yml)."""
    return {"host": "db", "read_at": f"{NOW}\n",
            "gateways": [{"host": "gateway", "url": "http://10.89.71.18:9464/metrics", "status": gw_status,
                          "content": exposition() if gw_content is None else gw_content,
                          "msg": "" if gw_status == 200 else "Connection refused"}],
            "alerts": [{"source": "prometheus", "url": "http://10.89.71.19:9090/api/v1/alerts", "status": prom_status,
                        "content": prom_alerts() if prom is None else prom, "msg": ""},
                       {"source": "alertmanager", "url": "http://10.89.71.19:9093/api/v2/alerts?active=true",
                        "status": am_status, "content": am_alerts() if am is None else am, "msg": ""}]}


def snapshot(mon="healthy", gateways=("gateway",), mon_hosts=("db",)) -> str:
    """metrics_snapshot.txt as write_evidence.py renders it."""
    return write_evidence.metrics_snapshot(monitoring() if mon == "healthy" else mon, list(gateways), list(mon_hosts))


def make_run(tmp_path: Path, **files) -> Path:
    run = tmp_path / "run"
    run.mkdir(parents=True)
    content = {
        "service_status.txt": service_status(),
        "gateway_db_connect.log": connect_log(),
        "chat_call.json": chat(),
        "requests_head.txt": "call_id | model\n c0 | m\n(5 rows)\n",
        "responses_head.txt": "total_tokens | cost\n 30 | 0.000123\n(5 rows)\n",
        "join_check.txt": "integrity 100%\n",
        "join_check.json": join(),
        "requests_head.json": req_head(),
        "responses_head.json": resp_head(),
        "db_auth_check.json": auth(),
        "config.redacted.yaml": "general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n",
        "run.json": manifest(),
        "pgbackrest_info.json": backup_info(),
        "metrics_snapshot.txt": snapshot(),
    }
    content.update(files)
    for name, value in content.items():
        if value is None:
            continue
        text = value if isinstance(value, str) else json.dumps(value)
        (run / name).write_text(text)
    return run


def results(run: Path, secrets=SECRETS) -> dict[str, str]:
    return {c.name: c.result for c in verdict.compute(run, secrets)}


ALL = ["gateway_active", "postgresql_active", "db_tls", "db_scram", "http_chat", "gateway_https", "request_rows",
       "response_rows", "join_integrity", "logging_delay", "pool_reuse", "backup_pitr", "monitoring_clean",
       "no_secrets"]


def only_failed(res: dict[str, str]) -> set[str]:
    assert set(res) == set(ALL), "every criterion is always reported"
    return {k for k, v in res.items() if v == "FAIL"}


def test_healthy_run_passes(tmp_path):
    res = results(make_run(tmp_path))
    assert only_failed(res) == set()
    assert res["pool_reuse"] == "INFO"


def test_summary_files_are_written(tmp_path):
    run = make_run(tmp_path)
    crits = verdict.compute(run, SECRETS)
    summary = verdict.write_summary(run, crits, {"run_id": "x", "expected_calls": K})
    assert summary["verdict"] == "PASS"
    on_disk = json.loads((run / "summary.json").read_text())
    assert [c["name"] for c in on_disk["criteria"]] == ALL
    md = (run / "SUMMARY.md").read_text()
    assert "| criterion | result | figure | source file |" in md
    assert md.count("| PASS |") == len(ALL) - 1


@pytest.mark.parametrize("files,expected", [
    ({"service_status.txt": service_status(("inactive", "dead"))}, {"gateway_active"}),
    ({"service_status.txt": service_status(("failed", "failed"))}, {"gateway_active"}),
    ({"service_status.txt": None}, {"gateway_active", "postgresql_active"}),
    ({"chat_call.json": chat(status=500, cost=None, tokens=0)}, {"http_chat"}),
    ({"chat_call.json": chat(cost="0.0")}, {"http_chat"}),
    ({"chat_call.json": chat(n=K - 1)}, {"http_chat", "request_rows"}),  # rows without a call
    # rows stopped arriving
    ({"join_check.json": join(request_rows=0, response_rows=0, matched_pairs=0, integrity_pct=0.0,
                              delay_p50_ms=None, delay_p99_ms=None, delay_max_ms=None),
      "requests_head.json": req_head(ids=[]), "responses_head.json": resp_head(n=0)},
     {"request_rows", "response_rows", "join_integrity", "logging_delay"}),
    # one response row deleted: an orphan request
    ({"join_check.json": join(response_rows=K - 1, matched_pairs=K - 1, requests_without_response=1,
                              integrity_pct=80.0),
      "responses_head.json": resp_head(n=K - 1)},
     {"response_rows", "join_integrity"}),
    ({"responses_head.json": resp_head(cost=0)}, {"response_rows"}),
    ({"responses_head.json": resp_head(status="failure")}, {"response_rows"}),
    # call ids are caller-settable: a repeat is information (each call keeps its pair)
    ({"join_check.json": join(duplicate_call_ids=1)}, set()),
    # a disconnected client is not a clean success
    ({"responses_head.json": resp_head(status="client_disconnected")}, {"response_rows"}),
    ({"requests_head.json": req_head(ids=["c0", "c1", "c2", "c3", "other"])}, {"request_rows"}),
    ({"join_check.json": join(delay_max_ms=1500.0)}, {"logging_delay"}),
    ({"join_check.json": "not json"}, {"request_rows", "response_rows", "join_integrity", "logging_delay"}),
])
def test_each_defect_fails_its_criterion(tmp_path, files, expected):
    assert only_failed(results(make_run(tmp_path, **files))) == expected


def fresh(**over) -> dict:
    f = copy.deepcopy(FRESH)
    for k, v in over.items():
        if isinstance(v, dict):
            f[k].update(v)
        else:
            f[k] = v
    return f


def test_md5_rule_in_force_fails_scram_even_with_scram_verifier(tmp_path):
    hba = copy.deepcopy(HBA)
    hba[1]["auth_method"] = "md5"
    run = make_run(tmp_path, **{"db_auth_check.json": auth(hba_rules=hba), "gateway_db_connect.log": connect_log(
        fresh=fresh(auth={"system_user": "md5:litellm_writer", "method": "md5"}))})
    assert only_failed(results(run)) == {"db_scram"}


def test_earlier_broad_md5_rule_shadows_scram_rule(tmp_path):
    hba = copy.deepcopy(HBA)
    hba.insert(1, {"line_number": 2, "type": "host", "database": ["all"], "user_name": ["all"],
                   "address": "10.89.71.0", "netmask": "255.255.255.0", "auth_method": "md5", "error": None})
    hba[2]["line_number"] = 3
    crit = next(c for c in verdict.compute(make_run(tmp_path, **{"db_auth_check.json": auth(hba_rules=hba)}),
                                           SECRETS) if c.name == "db_scram")
    assert crit.result == "FAIL"
    assert "md5" in crit.figure and "non-TLS" in crit.figure


def test_rule_for_other_address_does_not_count(tmp_path):
    hba = copy.deepcopy(HBA)
    hba[1]["address"] = "10.89.71.50"
    run = make_run(tmp_path, **{"db_auth_check.json": auth(hba_rules=hba)})
    assert only_failed(results(run)) == {"db_scram"}


def test_fresh_connection_md5_alone_fails(tmp_path):
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(
        fresh=fresh(auth={"system_user": "md5:litellm_writer", "method": "md5"}))})
    assert only_failed(results(run)) == {"db_scram"}


def crit(run: Path, name: str):
    return next(c for c in verdict.compute(run, SECRETS) if c.name == name)


def test_scram_figure_names_every_part_it_checked(tmp_path):
    figure = crit(make_run(tmp_path), "db_scram").figure
    for part in ("hba for 10.89.71.18: hostssl scram-sha-256", "verifier SCRAM-SHA-256",
                 "fresh connection from gateway (10.89.71.18): scram-sha-256 by SYSTEM_USER",
                 "pool gateway (10.89.71.18): scram-sha-256"):
        assert part in figure, figure


def test_missing_fresh_connection_fails_instead_of_passing_silently(tmp_path):
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(fresh=None)})
    assert only_failed(results(run)) == {"db_scram", "db_tls"}
    assert "fresh connection from gateway: none in the file" in crit(run, "db_scram").figure


def test_failed_fresh_connection_fails(tmp_path):
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(
        fresh={"connected": False, "error": "OperationalError: password authentication failed"})})
    assert only_failed(results(run)) == {"db_scram", "db_tls"}
    assert "password authentication failed" in crit(run, "db_scram").figure


def test_connect_line_without_client_address_fails_scram(tmp_path):
    c = copy.deepcopy(CONNECT)
    del c["client_addr"]
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(connects=(c,))})
    assert only_failed(results(run)) == {"db_scram"}


def test_address_the_server_saw_is_judged_by_pg_hba(tmp_path):
    """The gateway connects from an address the inventory does not name (a second interface,
    NAT): pg_hba is evaluated for what the server saw, and here an md5 rule admits it."""
    c = copy.deepcopy(CONNECT)
    c["client_addr"] = "10.89.71.77"
    hba = copy.deepcopy(HBA) + [{"line_number": 3, "type": "hostssl", "database": ["all"], "user_name": ["all"],
                                 "address": "10.89.71.77", "netmask": "255.255.255.255", "auth_method": "md5",
                                 "error": None}]
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(connects=(c,)),
                                "db_auth_check.json": auth(hba_rules=hba)})
    assert only_failed(results(run)) == {"db_scram"}
    assert "hba for 10.89.71.77: hostssl md5" in crit(run, "db_scram").figure


def test_md5_verifier_fails_scram(tmp_path):
    run = make_run(tmp_path, **{"db_auth_check.json": auth(writer_verifier="md5")})
    assert only_failed(results(run)) == {"db_scram"}


def test_connect_line_without_tls_fails_tls(tmp_path):
    c = copy.deepcopy(CONNECT)
    c["ssl"]["server_ssl"] = False
    c["ssl"]["client_ssl_in_use"] = False
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(connects=(c,))})
    assert only_failed(results(run)) == {"db_tls"}


def test_backend_without_tls_fails_tls(tmp_path):
    run = make_run(tmp_path, **{"db_auth_check.json": auth(writer_backends=[{"pid": 1, "ssl": False}])})
    assert only_failed(results(run)) == {"db_tls"}


def test_no_live_writer_connection_fails_tls(tmp_path):
    run = make_run(tmp_path, **{"db_auth_check.json": auth(writer_backends=[])})
    assert only_failed(results(run)) == {"db_tls"}


def test_no_connect_line_fails_tls_and_scram(tmp_path):
    run = make_run(tmp_path, **{"gateway_db_connect.log": "### host=gateway\n"})
    assert only_failed(results(run)) == {"db_tls", "db_scram"}


def test_pool_reuse_is_reported_never_judged(tmp_path):
    run = make_run(tmp_path, **{"gateway_db_connect.log": connect_log(pools=())})
    crits = {c.name: c for c in verdict.compute(run, SECRETS)}
    assert crits["pool_reuse"].result == "INFO"
    run2 = make_run(tmp_path / "b", **{})
    crit = next(c for c in verdict.compute(run2, SECRETS) if c.name == "pool_reuse")
    assert "95.0%" in crit.figure


def test_secret_in_any_file_fails(tmp_path):
    run = make_run(tmp_path, **{"requests_head.txt": f"oops {SECRETS[0]}\n"})
    assert only_failed(results(run)) == {"no_secrets"}


def test_without_secret_list_the_secret_check_cannot_pass(tmp_path):
    assert only_failed(results(make_run(tmp_path), secrets=[])) == {"no_secrets"}


def test_cli_main_writes_summary_and_exit_0_on_fail(tmp_path, monkeypatch, capsys):
    import io
    run = make_run(tmp_path, **{"service_status.txt": service_status(("inactive", "dead"))})
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"secrets": SECRETS})))
    assert verdict.main(["--run-dir", str(run), "--secrets-on-stdin"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"verdict": "FAIL", "failed": ["gateway_active"]}
    assert json.loads((run / "summary.json").read_text())["verdict"] == "FAIL"


# ----------------------------------------------------------------------- scrub

def test_mask_known_values_and_generic_shapes():
    raw = (f"PGLOG_DB_PASSWORD={SECRETS[0]}\nAuthorization: Bearer {SECRETS[1]}\n"
           "postgresql://u:hunter22@db/x\n{\"password\": \"abc\"}\n"
           "\"total_tokens\": 30, password_encryption = scram-sha-256\n")
    out = scrub.mask(raw, scrub.load_secrets(SECRETS))
    for s in SECRETS + ["hunter22", "abc\""]:
        assert s not in out
    assert '"total_tokens": 30' in out and "password_encryption = scram-sha-256" in out


def test_short_values_are_not_treated_as_secrets():
    assert scrub.load_secrets(["ab", None, "longenough"]) == ["longenough"]


def test_redact_config_keeps_indirections_and_costs():
    cfg = ("model_list:\n  - model_name: stub\n    litellm_params:\n      api_key: realkey123\n"
           "      input_cost_per_token: 1.0e-06\ngeneral_settings:\n"
           "  master_key: os.environ/LITELLM_MASTER_KEY\n  # a comment\n"
           f"  custom_auth: litellm_pglog.auth.user_api_key_auth\n  other: {SECRETS[2]}\n")
    out = scrub.redact_config(cfg, SECRETS)
    assert "realkey123" not in out and SECRETS[2] not in out
    assert "master_key: os.environ/LITELLM_MASTER_KEY" in out
    assert "input_cost_per_token: 1.0e-06" in out and "# a comment" in out


def _collected(**over) -> dict:
    show = {"item": "litellm-gateway.service", "cmd": ["systemctl", "show", "litellm-gateway.service"], "rc": 0,
            "stdout": "ActiveState=active\nSubState=running\nNRestarts=0", "stderr": ""}
    status = {"item": "litellm-gateway.service", "cmd": ["systemctl", "status"], "rc": 0,
              "stdout": f"Active: active (running)\n  env PGLOG_DB_PASSWORD={SECRETS[0]}", "stderr": ""}
    journal = {"cmd": ["journalctl"], "rc": 0, "stderr": "",
               "stdout": "noise\n" + connect_log().split("\n", 1)[1]}
    c = {"secrets": SECRETS, "run_id": "x", "tag": "run:x", "calls": K, "max_logging_delay_ms": 1000,
         "units": {"litellm_gateway": GW_UNIT, "postgresql": PG_UNIT},
         "expected_units": {"db": ["postgresql@17-main.service"], "gateway": ["litellm-gateway.service"]},
         "gateways": ["gateway"],
         "hosts": {"db": None, "gateway": {"units": ["litellm-gateway.service"], "show": [show],
                                           "status": [status], "journal": journal, "since": "Fri",
                                           "connect_check": {"cmd": ["systemd-run", "connect-check"], "rc": 0,
                                                             "stdout": json.dumps(FRESH), "stderr": ""}}},
         "chat": {"cmd": ["python3"], "rc": 0, "stdout": json.dumps(chat()), "stderr": ""},
         "cli": {"join_check_json": {"cmd": ["x"], "rc": 0, "stdout": json.dumps(join()), "stderr": ""},
                 "requests_head": {"cmd": ["x"], "rc": 1, "stdout": "", "stderr": "boom"}},
         "db_auth": auth(), "config": f"general_settings:\n  master_key: {SECRETS[1]}\n"}
    c.update(over)
    return c


def test_evidence_renders_masks_and_writes(tmp_path, monkeypatch, capsys):
    import io
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(_collected())))
    assert write_evidence.main([str(tmp_path)]) == 0
    written = set(json.loads(capsys.readouterr().out)["written"])
    assert {"service_status.txt", "gateway_db_connect.log", "chat_call.json", "requests_head.txt",
            "responses_head.txt", "join_check.txt", "join_check.json", "db_auth_check.json",
            "config.redacted.yaml"} <= written
    for path in tmp_path.iterdir():
        for secret in SECRETS:
            assert secret not in path.read_text(), path.name
    status = (tmp_path / "service_status.txt").read_text()
    assert "### host=db unit=postgresql@17-main.service\nActiveState=unknown" in status
    log = (tmp_path / "gateway_db_connect.log").read_text()
    assert "noise" not in log and "event=connect" in log
    assert "### host=gateway check=connect-check" in log and '"client_addr": "10.89.71.18"' in log
    assert "[stderr]\nboom" in (tmp_path / "requests_head.txt").read_text()
    assert "error" in json.loads((tmp_path / "responses_head.json").read_text())
    assert json.loads((tmp_path / "run.json").read_text())["units"]["postgresql"] == PG_UNIT
    # the verdict reads what write_evidence.py wrote: the db host gave no data -> FAIL there
    res = results(tmp_path)
    assert res["postgresql_active"] == "FAIL" and res["gateway_active"] == "PASS"
    assert res["db_tls"] == "PASS" and res["no_secrets"] == "PASS"


def test_scrub_refuses_paths(tmp_path):
    with pytest.raises(ValueError):
        scrub.write_all(tmp_path, {"files": {"../x": "y"}})


# ------------------------------------------------------------- the run's manifest

def test_cluster_not_named_main_is_judged_by_the_manifest(tmp_path):
    """A healthy host whose PostgreSQL cluster is called `logs`: the play names that unit in
    run.json and the verdict judges it, not a unit name of its own."""
    unit = "postgresql@17-logs.service"
    run = make_run(tmp_path, **{"service_status.txt": service_status(pg_unit=unit),
                                "run.json": manifest(pg_unit=unit)})
    assert only_failed(results(run)) == set()
    # and the unit it was told about must really be there: main's section does not count
    run2 = make_run(tmp_path / "2", **{"run.json": manifest(pg_unit=unit)})
    assert only_failed(results(run2)) == {"postgresql_active"}


def test_verdict_names_no_unit_of_its_own():
    source = (Path(verdict.__file__)).read_text()
    assert "postgresql@" not in source and "litellm-gateway.service" not in source


@pytest.mark.parametrize("bad", [None, "not json", {"expected_calls": K}, {**manifest(), "units": {}}])
def test_missing_or_incomplete_manifest_fails(tmp_path, bad):
    run = make_run(tmp_path, **{"run.json": bad})
    crits = verdict.compute(run, SECRETS)
    assert [c.result for c in crits if c.name == "manifest"] == ["FAIL"]
    assert all(c.result != "PASS" for c in crits if c.name != "no_secrets")


def test_expected_calls_come_from_the_manifest(tmp_path):
    run = make_run(tmp_path, **{"run.json": manifest(calls=K + 1)})
    assert {"http_chat", "request_rows", "response_rows", "join_integrity"} <= only_failed(results(run))


# ------------------------------------------------------- the run = its tag AND the play's key

@pytest.mark.parametrize("name", ["join_check.json", "requests_head.json", "responses_head.json"])
def test_evidence_not_limited_to_the_plays_key_fails(tmp_path, name):
    """Tags are caller-chosen: rows counted by tag alone may be anyone's."""
    unfiltered = {"join_check.json": join(key_hash12=None), "requests_head.json": req_head(key12=None),
                  "responses_head.json": resp_head(key12=None)}[name]
    res = results(make_run(tmp_path, **{name: unfiltered}))
    failed = only_failed(res)
    assert failed and failed <= {"request_rows", "response_rows", "join_integrity"}


def test_rows_of_other_keys_with_the_runs_tag_are_named_not_counted(tmp_path):
    run = make_run(tmp_path, **{"join_check.json": join(other_key_rows=3)})
    assert only_failed(results(run)) == set()
    figure = crit(run, "request_rows").figure
    assert "made with the play's key (api_key_hash h1:0a1b2c3d4" in figure
    assert "3 rows of the tag made with other keys, not counted" in figure


def test_response_rows_show_every_status(tmp_path):
    head = resp_head()
    head["by_status"]["client_disconnected"] = {"responses": 2, "total_tokens": 40, "cost_usd": 0.0001}
    figure = crit(make_run(tmp_path, **{"responses_head.json": head}), "response_rows").figure
    assert "by status: client_disconnected 2 (40 tokens" in figure and "success 5 (150 tokens" in figure


def test_duplicate_call_ids_are_reported_as_information(tmp_path):
    c = crit(make_run(tmp_path, **{"join_check.json": join(duplicate_call_ids=2)}), "join_integrity")
    assert c.result == "PASS" and "duplicate_call_ids 2 (information" in c.figure


# --------------------------------------------------------------------- HTTPS of the chat calls

@pytest.mark.parametrize("calls", [
    chat(url="http://10.89.71.18:4000/v1/chat/completions", tls_version=None, verified=False),
    chat(verified=False),
    chat(tls_version="TLSv1.1"),
    chat(tls_version=None),
], ids=["plain-http", "unverified", "tls-1.1", "no-tls-version"])
def test_chat_calls_not_over_verified_tls_fail_https(tmp_path, calls):
    assert only_failed(results(make_run(tmp_path, **{"chat_call.json": calls}))) == {"gateway_https"}


def test_https_figure_names_version_and_verification(tmp_path):
    c = crit(make_run(tmp_path), "gateway_https")
    assert c.result == "PASS"
    assert "5/5 calls over HTTPS with a verified certificate (TLSv1.3 TLS_AES_256_GCM_SHA384)" in c.figure


def test_plain_http_by_choice_is_info_never_pass(tmp_path):
    run = make_run(tmp_path, **{"run.json": {**manifest(), "gateway_https": False},
                                "chat_call.json": chat(url="http://10.89.71.18:4000/v1/chat/completions",
                                                       tls_version=None, verified=False)})
    c = crit(run, "gateway_https")
    assert c.result == "INFO" and "plain HTTP by configuration" in c.figure
    assert only_failed(results(run)) == set()


# --------------------------------------------------------------------- secrets: every file

def test_secret_in_a_file_outside_the_contract_fails(tmp_path):
    run = make_run(tmp_path)
    (run / "notes.txt").write_text(f"left behind: {SECRETS[2]}\n")
    assert only_failed(results(run)) == {"no_secrets"}
    (run / "notes.txt").unlink()
    (run / "raw").mkdir()
    (run / "raw" / "dump.json").write_text(json.dumps({"k": SECRETS[0]}))
    assert only_failed(results(run)) == {"no_secrets"}


def test_summary_files_are_searched_as_written(tmp_path):
    """A secret that reaches a figure (here a host name holding it) is masked in SUMMARY.md and
    summary.json, and no_secrets says FAIL and where; the figure counts every file."""
    run = make_run(tmp_path)
    crits = verdict.compute(run, SECRETS)
    n_before = len([p for p in run.iterdir() if p.is_file()])
    clean = verdict.write_summary(run, crits, {"run_id": "x"}, SECRETS)
    no_sec = next(c for c in clean["criteria"] if c["name"] == "no_secrets")
    assert clean["verdict"] == "PASS" and no_sec["result"] == "PASS"
    assert f"searched in all {n_before + 2} files of the run directory" in no_sec["figure"]
    leaky = [verdict.Criterion(c.name, c.title, c.passed, c.figure + f" (host {SECRETS[1]})", c.source)
             if c.name == "gateway_active" else c for c in crits]
    summary = verdict.write_summary(run, leaky, {"run_id": "x"}, SECRETS)
    assert summary["verdict"] == "FAIL" and summary["failed"] == ["no_secrets"]
    no_sec = next(c for c in summary["criteria"] if c["name"] == "no_secrets")
    assert "SUMMARY.md (masked)" in no_sec["figure"] and "summary.json (masked)" in no_sec["figure"]
    for name in ("SUMMARY.md", "summary.json"):
        text = (run / name).read_text()
        assert SECRETS[1] not in text and "********" in text


def test_stale_summary_holding_a_secret_is_replaced(tmp_path, monkeypatch, capsys):
    import io
    run = make_run(tmp_path)
    (run / "SUMMARY.md").write_text(f"old {SECRETS[0]}\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"secrets": SECRETS})))
    assert verdict.main(["--run-dir", str(run), "--secrets-on-stdin"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "PASS"
    for p in run.iterdir():
        assert SECRETS[0] not in p.read_text()


# ------------------------------------------------------------------ backups (backup_pitr)

def _backup_crit(tmp_path, info) -> verdict.Criterion:
    run = make_run(tmp_path, **{"pgbackrest_info.json": info})
    assert only_failed(results(run)) <= {"backup_pitr"}
    return next(c for c in verdict.compute(run, SECRETS) if c.name == "backup_pitr")


def test_healthy_backups_pass_with_their_figures(tmp_path):
    crit = _backup_crit(tmp_path, backup_info())
    assert crit.result == "PASS", crit.figure
    # the diff is 3 h old; the union of both timers has a 24 h longest gap (+10 min delay, +2 h grace)
    assert "newest backup 20261123-011500F_20261125-011500D (diff) 3.0 h old, allowed 26.2 h" in crit.figure
    assert "newest full 48.0 h old, allowed 170.2 h" in crit.figure
    assert "pgbackrest check passed" in crit.figure


def _aged(diff_age_h: float, full_age_h: float) -> list[dict]:
    return [{"label": "F", "type": "full", "error": False,
             "timestamp": {"start": NOW - full_age_h * 3600 - 1, "stop": NOW - full_age_h * 3600}},
            {"label": "F_D", "type": "diff", "error": False,
             "timestamp": {"start": NOW - diff_age_h * 3600 - 1, "stop": NOW - diff_age_h * 3600}}]


@pytest.mark.parametrize("info,why", [
    # the daily schedule missed a day: newest backup 27 h old (allowed 26.2 h)
    (backup_info(backups=_aged(27, 48)), "newest backup F_D (diff) 27.0 h old, allowed 26.2 h"),
    # diffs run, but the weekly full did not: 8 days old (allowed 7 d + 2 h 10 min)
    (backup_info(backups=_aged(3, 8 * 24)), "newest full 192.0 h old, allowed 170.2 h"),
    (backup_info(backups=[{**b, "error": True} for b in _aged(3, 48)]), "no valid backup"),
    (backup_info(backups=[]), "no valid backup"),
    (backup_info(status=99), "stanza status 99"),
    (backup_info(check_rc=82), "pgbackrest check failed (exit 82): ERROR: [082]"),
    (backup_info(archiver={"archive_mode": "on", "archived_count": 42, "failed_count": 3,
                           "last_archived_epoch": NOW - 600, "last_failed_epoch": NOW - 20,
                           "last_failed_wal": "000000010000000000000043"}), "the archiver's last attempt failed"),
    (backup_info(archiver={"archive_mode": "off", "archived_count": 0, "failed_count": 0}), "archive_mode is 'off'"),
    (backup_info(archiver={}, archiver_error="connection refused"), "pg_stat_archiver not read: connection refused"),
    (backup_info(info=None, info_rc=1, info_stderr="HostConnectError"), "pgbackrest info gave no stanza"),
    (backup_info(collected_at=None), "no collected_at"),
    ({"repository_hosts": [], "error": "no host in group pgbackrest_repo: no backups are configured"},
     "no backups are configured"),
    ({"repository_hosts": ["gateway"], "error": "no data from the repository host"}, "no data from the repository host"),
])
def test_each_backup_defect_fails_backup_pitr(tmp_path, info, why):
    crit = _backup_crit(tmp_path, info)
    assert crit.result == "FAIL" and why in crit.figure, crit.figure


def test_stopped_or_disabled_timer_fails(tmp_path):
    info = backup_info()
    info["timers"][1]["show"]["ActiveState"] = "inactive"
    crit = _backup_crit(tmp_path, info)
    assert crit.result == "FAIL" and "timer pgbackrest-backup-diff.timer: inactive/enabled" in crit.figure


def test_unreadable_schedule_fails(tmp_path):
    info = backup_info()
    info["timers"][0]["calendar_analysis"] = "Failed to parse calendar specification"
    crit = _backup_crit(tmp_path, info)
    assert crit.result == "FAIL" and "no schedule read" in crit.figure and "no full backup timer" in crit.figure


def test_the_allowed_age_follows_the_schedule(tmp_path):
    """The same 27 h old backup passes when the timers only ask for one every two days."""
    info = backup_info(backups=_aged(27, 48))
    info["timers"][1]["calendar_analysis"] = _calendar(NOW + 86400, 2 * 86400)
    crit = _backup_crit(tmp_path, info)
    assert crit.result == "PASS", crit.figure


def test_an_old_failure_before_the_last_success_passes(tmp_path):
    arch = {"archive_mode": "on", "archived_count": 42, "failed_count": 1, "last_archived_epoch": NOW - 30,
            "last_archived_wal": "000000010000000000000042", "last_failed_epoch": NOW - 3600,
            "last_failed_wal": "000000010000000000000030"}
    assert _backup_crit(tmp_path, backup_info(archiver=arch)).result == "PASS"


def test_missing_backup_file_fails_only_backup_pitr(tmp_path):
    assert only_failed(results(make_run(tmp_path, **{"pgbackrest_info.json": None}))) == {"backup_pitr"}


def test_evidence_writer_renders_the_backup_files(tmp_path):
    timers = [{"type": "full", "unit": "pgbackrest-backup-full.timer",
               "show": "Id=pgbackrest-backup-full.timer\nActiveState=active\nUnitFileState=enabled\n",
               "calendar": _calendar(NOW + 86400, 7 * 86400)}]
    backup = {"host": "gateway", "stanza": "pglog", "collected_at": f"{NOW}\n", "grace_s": 7200,
              "info_json": {"cmd": ["pgbackrest"], "rc": 0, "stderr": "",
                            "stdout": json.dumps(backup_info()["info"])},
              "info_text": {"cmd": ["pgbackrest", "info"], "rc": 0, "stdout": "stanza: pglog\n    status: ok", "stderr": ""},
              "check": {"cmd": ["pgbackrest", "check"], "rc": 0, "stdout": "", "stderr": ""},
              "timers": timers, "archiver": {"archive_mode": "on"}, "archiver_error": ""}
    data = write_evidence.backup_json(backup, ["gateway"])
    assert data["collected_at"] == NOW and data["info"][0]["name"] == "pglog"
    assert data["timers"][0]["show"]["ActiveState"] == "active" and len(verdict.elapses(data["timers"][0]["calendar_analysis"])) == 12
    text = write_evidence.backup_text(backup, ["gateway"])
    assert "status: ok" in text and "### timer type=full" in text
    assert write_evidence.backup_json(None, [])["error"].startswith("no host in group pgbackrest_repo")


# ------------------------------------------------------------ monitoring_clean (issue 12)

def _mon_crit(tmp_path, text) -> verdict.Criterion:
    return crit(make_run(tmp_path, **{"metrics_snapshot.txt": text}), "monitoring_clean")


def test_healthy_monitoring_passes_with_its_figures(tmp_path):
    c = _mon_crit(tmp_path, snapshot())
    assert c.result == "PASS", c.figure
    assert f"gateway: {K} written, 0 dropped, 0 rejected" in c.figure
    assert "prometheus: none firing" in c.figure and "alertmanager: none active" in c.figure


@pytest.mark.parametrize("mon,why", [
    (monitoring(gw_content=exposition(dropped=2)), "2 records dropped"),
    (monitoring(gw_content=exposition(rejected=1)), "1 records rejected"),
    (monitoring(gw_status=-1, gw_content=""), "gateway: metrics not read (status -1)"),
    (monitoring(gw_content="# HELP python_info x\npython_info 1.0\n"), "no pglog_records_dropped/rejected/written_total"),
    (monitoring(prom=prom_alerts(("PostgresDown", "firing"))), "prometheus: firing PostgresDown"),
    (monitoring(am=am_alerts("GatewayDown")), "alertmanager: active GatewayDown"),
    (monitoring(prom_status=-1), "prometheus: alerts not read"),
    (monitoring(am="<html>proxy error</html>"), "alertmanager: 1 unreadable line"),
    (None, "no host in group monitoring"),
])
def test_each_monitoring_defect_fails_monitoring_clean(tmp_path, mon, why):
    text = write_evidence.metrics_snapshot(mon, ["gateway"], [] if mon is None else ["db"])
    res = results(make_run(tmp_path, **{"metrics_snapshot.txt": text}))
    assert only_failed(res) == {"monitoring_clean"}
    c = crit(tmp_path / "run", "monitoring_clean")
    assert why in c.figure, c.figure


def test_pending_alert_is_named_but_does_not_fail(tmp_path):
    c = _mon_crit(tmp_path, snapshot(monitoring(prom=prom_alerts(("PglogSpoolGrowing", "pending")))))
    assert c.result == "PASS" and "(1 pending)" in c.figure


def test_a_gateway_missing_from_the_snapshot_fails(tmp_path):
    """Every gateway of the manifest must have its section: two expected, one scraped."""
    run = make_run(tmp_path, **{"run.json": {**manifest(), "expected_units": {
        "gateway": [GW_UNIT], "gateway2": [GW_UNIT], "db": [PG_UNIT]}}})
    c = crit(run, "monitoring_clean")
    assert c.result == "FAIL" and "gateway2: metrics not read (status none)" in c.figure


def test_missing_snapshot_fails_only_monitoring_clean(tmp_path):
    assert only_failed(results(make_run(tmp_path, **{"metrics_snapshot.txt": None}))) == {"monitoring_clean"}


def test_snapshot_keeps_the_logging_metrics_and_the_alerts_only(tmp_path):
    text = snapshot(monitoring(prom=prom_alerts(("PostgresDown", "firing"))))
    assert "### source=gateway host=gateway url=http://10.89.71.18:9464/metrics status=200" in text
    assert "pglog_records_written_total 5.0" in text and "python_info" not in text
    line = [ln for ln in text.splitlines() if ln.startswith("{")][0]
    assert json.loads(line)["alertname"] == "PostgresDown" and json.loads(line)["state"] == "firing"


def test_metric_sum_adds_every_label_set_and_tells_absent_from_zero():
    lines = ['pglog_requests_total{model="a",status="success"} 3.0',
             'pglog_requests_total{model="b c",status="x}y"} 2.0', "pglog_requests_created 1.7e9",
             "pglog_records_dropped_total 0.0"]
    assert verdict.metric_sum(lines, "pglog_requests_total") == 5.0
    assert verdict.metric_sum(lines, "pglog_records_dropped_total") == 0.0
    assert verdict.metric_sum(lines, "pglog_records_rejected_total") is None
