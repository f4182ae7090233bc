"""Every metric of the bundle's own that an alert rule reads -- and that the promtool tests
feed -- is one the bundle really publishes.

promtool tests prove a rule's logic on the series they are given; they cannot see that a
rule reads a name no exporter writes (such a rule is green in CI and blind in production:
BackupTooOld once read `pgbackrest_last_backup_age_seconds`, which nothing published). The
publishers here are the real code: the logging package's Metrics (rendered by
prometheus_client), the pgBackRest textfile writer and the TLS-expiry textfile script.
Names of other exporters (node_, pg_, up) are theirs to keep and not checked here.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest

import pgbackrest_metrics as pm
from litellm_pglog.metrics import Metrics
from litellm_pglog.stats import COUNTERS

ROOT = Path(__file__).resolve().parents[1]
OWN = re.compile(r"\b((?:pglog|pgbackrest)_[a-zA-Z0-9_]+)\b")
TLS_SCRIPT = ROOT / "roles" / "exporters" / "files" / "pglog-tls-textfile"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "alerts_test.yml"
NOW = 1796000000.0


def check_alert_rules():
    spec = importlib.util.spec_from_file_location("check_alert_rules", ROOT / "scripts" / "check-alert-rules.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def sample_names(lines: list[str]) -> set[str]:
    return {re.split(r"[{\s]", ln, maxsplit=1)[0] for ln in lines if ln and not ln.startswith("#")}


def published() -> set[str]:
    mx = Metrics(multiprocess=False)
    mx.publish(dict.fromkeys(COUNTERS, 1), lambda: dict.fromkeys(
        ("queue_depth", "memory_records", "spool_segments", "spool_bytes", "writer_online",
         "pool_checked_out", "pool_size"), 1.0), force=True)
    mx.observe_row({"model": "m", "status": "failure", "prompt_tokens": 1, "completion_tokens": 1, "cost_usd": 0.1})
    mx.observe_committed([{"ended_at": NOW - 1}], now=NOW)
    mx.timed(lambda rows: None)([])
    names = sample_names(generate_latest(mx.registry).decode().splitlines())
    info = [{"name": "pglog", "status": {"code": 0, "message": "ok", "lock": {"backup": {"held": False}}},
             "backup": [{"label": "F", "type": "full", "error": False, "timestamp": {"start": NOW - 90, "stop": NOW - 60},
                         "info": {"size": 1, "repository": {"size": 1, "delta": 1}}}]}]
    names |= sample_names(pm.info_metrics("pglog", info, NOW) + pm.check_metrics("pglog", "success", "0", NOW))
    names |= set(re.findall(r"\b(pglog_tls_[a-z_]+)\{", TLS_SCRIPT.read_text()))
    return names


def rule_metrics() -> dict[str, set[str]]:
    """Own metric names each alert's expression reads, as the role renders the rules."""
    rules = yaml.safe_load(check_alert_rules().render())
    # label matchers and strings are not metric names (up{job="pglog_gateway"})
    bare = lambda expr: re.sub(r'\{[^}]*\}|"[^"]*"', "", expr)  # noqa: E731
    return {r["alert"]: set(OWN.findall(bare(r["expr"]))) for g in rules["groups"] for r in g["rules"]
            if "alert" in r}


def test_the_publishers_are_read():
    names = published()
    assert {"pglog_records_dropped_total", "pglog_writer_online", "pglog_response_to_row_seconds_bucket",
            "pgbackrest_backup_last_completion_timestamp_seconds", "pglog_tls_certificate_not_after_seconds"} <= names


def test_every_own_metric_a_rule_reads_is_published():
    names = published()
    blind = {alert: sorted(used - names) for alert, used in rule_metrics().items() if used - names}
    assert not blind, f"alert rules read metrics nothing publishes: {blind}"


def test_every_own_series_the_promtool_tests_feed_is_published():
    names = published()
    fed = set()
    for test in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]:
        for series in test.get("input_series") or []:
            fed |= set(OWN.findall(series["series"].split("{", 1)[0]))
    assert fed, "no own series in the promtool tests"
    assert not fed - names, f"promtool tests feed series nothing publishes: {sorted(fed - names)}"


def test_the_check_catches_a_blind_rule():
    """The name the old BackupTooOld read is not published."""
    assert "pgbackrest_last_backup_age_seconds" not in published()
