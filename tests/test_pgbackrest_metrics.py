"""roles/pgbackrest/files/pgbackrest_metrics.py: the textfile node_exporter reads, from a
fabricated `pgbackrest info` (the script's call to pgbackrest is replaced), both ways."""

from __future__ import annotations

import json
import os
import re

import pytest

import pgbackrest_metrics as pm

NOW = 1796000000.0


def info(backups, code=0, held=False):
    return [{"name": "pglog", "status": {"code": code, "message": "ok", "lock": {"backup": {"held": held}}},
             "backup": backups}]


def bk(label, kind, stop, error=False, start=None, size=100, repo=10):
    return {"label": label, "type": kind, "error": error,
            "timestamp": {"start": start if start is not None else stop - 5, "stop": stop},
            "info": {"size": size, "repository": {"size": repo, "delta": repo}}}


def metrics(lines):
    """{'name{labels}': value} of the sample lines."""
    out = {}
    for line in lines:
        if not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def test_a_full_serves_every_schedule_and_a_diff_serves_diff_and_incr():
    m = metrics(pm.info_metrics("pglog", info([bk("F", "full", NOW - 86400), bk("D", "diff", NOW - 3600)]), NOW))
    s = 'stanza="pglog"'
    assert m[f'pgbackrest_backup_last_completion_timestamp_seconds{{{s},type="full"}}'] == NOW - 86400
    assert m[f'pgbackrest_backup_last_completion_timestamp_seconds{{{s},type="diff"}}'] == NOW - 3600
    assert m[f'pgbackrest_backup_last_completion_timestamp_seconds{{{s},type="incr"}}'] == NOW - 3600
    assert m[f"pgbackrest_info_success{{{s}}}"] == 1 and m[f"pgbackrest_stanza_status_code{{{s}}}"] == 0
    assert m[f'pgbackrest_backups{{{s},type="full"}}'] == 1 and m[f'pgbackrest_backups{{{s},type="diff"}}'] == 1
    assert m[f'pgbackrest_backup_last_duration_seconds{{{s},type="diff"}}'] == 5
    assert m[f"pgbackrest_metrics_last_run_timestamp_seconds{{{s}}}"] == NOW


def test_failed_backups_do_not_count():
    m = metrics(pm.info_metrics("pglog", info([bk("F", "full", NOW - 86400), bk("F2", "full", NOW - 60, error=True)]), NOW))
    assert m['pgbackrest_backup_last_completion_timestamp_seconds{stanza="pglog",type="full"}'] == NOW - 86400
    assert m['pgbackrest_backups{stanza="pglog",type="full"}'] == 1


def test_info_failure_is_a_metric_not_a_missing_file():
    lines = pm.info_metrics("pglog", None, NOW)
    m = metrics(lines)
    assert m['pgbackrest_info_success{stanza="pglog"}'] == 0
    assert m['pgbackrest_stanza_status_code{stanza="pglog"}'] == 99
    assert not [k for k in m if k.startswith("pgbackrest_backup_last_completion")]


def test_no_backup_yet_and_a_running_backup():
    m = metrics(pm.info_metrics("pglog", info([], code=2, held=True), NOW))
    assert m['pgbackrest_stanza_status_code{stanza="pglog"}'] == 2
    assert m['pgbackrest_backup_running{stanza="pglog"}'] == 1


@pytest.mark.parametrize("result,status,ok", [("success", "0", 1), ("exit-code", "82", 0), ("timeout", "", 0),
                                              (None, None, 0)])
def test_check_result_from_systemd(result, status, ok):
    m = metrics(pm.check_metrics("pglog", result, status, NOW))
    assert m['pgbackrest_check_success{stanza="pglog"}'] == ok
    assert m['pgbackrest_check_last_run_timestamp_seconds{stanza="pglog"}'] == NOW


def test_every_sample_has_help_and_type_and_parses():
    lines = pm.info_metrics("pglog", info([bk("F", "full", NOW - 1)]), NOW) + pm.check_metrics("pglog", "success", "0", NOW)
    names = {re.match(r"[a-z_]+", ln).group(0) for ln in lines if not ln.startswith("#")}
    for name in names:
        assert f"# HELP {name} " in "\n".join(lines) and f"# TYPE {name} gauge" in lines
    sample = re.compile(r'^[a-z_]+\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\} -?[0-9.e+]+$')
    assert all(sample.match(ln) for ln in lines if not ln.startswith("#"))


def test_main_writes_both_files_atomically(tmp_path, monkeypatch):
    monkeypatch.setattr(pm, "run_info", lambda stanza, user: info([bk("F", "full", NOW - 10)]))
    monkeypatch.setenv("SERVICE_RESULT", "success")
    monkeypatch.setenv("EXIT_STATUS", "0")
    assert pm.main(["--stanza=pglog", f"--dir={tmp_path}", "--check-result"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pgbackrest.prom", "pgbackrest_check.prom"]
    assert 'pgbackrest_check_success{stanza="pglog"} 1' in (tmp_path / "pgbackrest_check.prom").read_text()
    assert oct(os.stat(tmp_path / "pgbackrest.prom").st_mode & 0o777) == "0o644"
    # a run without --check-result leaves the check file alone
    monkeypatch.setattr(pm, "run_info", lambda stanza, user: None)
    assert pm.main(["--stanza=pglog", f"--dir={tmp_path}"]) == 0
    assert 'pgbackrest_info_success{stanza="pglog"} 0' in (tmp_path / "pgbackrest.prom").read_text()
    assert 'pgbackrest_check_success{stanza="pglog"} 1' in (tmp_path / "pgbackrest_check.prom").read_text()


def test_run_info_needs_a_json_answer(monkeypatch):
    class Done:
        def __init__(self, rc, out):
            self.returncode, self.stdout = rc, out

    monkeypatch.setattr(pm.pwd, "getpwnam", lambda u: type("P", (), {"pw_uid": 1, "pw_gid": 1, "pw_dir": "/"})())
    monkeypatch.setattr(pm.subprocess, "run", lambda *a, **k: Done(0, json.dumps(info([]))))
    assert pm.run_info("pglog", "postgres")[0]["name"] == "pglog"
    monkeypatch.setattr(pm.subprocess, "run", lambda *a, **k: Done(0, "not json"))
    assert pm.run_info("pglog", "postgres") is None
    monkeypatch.setattr(pm.subprocess, "run", lambda *a, **k: Done(56, ""))
    assert pm.run_info("pglog", "postgres") is None
