"""Monitoring on the bed (issue 12): exporters on every host, the logging package's metrics
endpoint, Prometheus scraping all of them, no alert firing on a healthy bed, metrics ports
closed to everyone but the monitoring host.

Everything is read on the monitoring host (molecule/shared/alerting.py); the "not the
monitoring host" probes come from this machine, which sits on the bed network too.
"""

import socket

import pytest

from alerting import (
    address,
    alertmanager_active,
    mon_host,
    prometheus,
    prometheus_firing,
    sample_sum,
    scrape,
    wait,
)
from bedlib import hosts_in, inventory_vars, lab_secrets
from test_gateway import chat, model_names

NODE_PORT, PG_EXPORTER_PORT = 9100, 9187


def gw_metrics_port() -> int:
    return int(inventory_vars(hosts_in("litellm_gateway")[0]).get("litellm_gateway_metrics_port", 9464))


def endpoints() -> list[tuple[str, int]]:
    out = [(h, NODE_PORT) for h in hosts_in("all")]
    out += [(h, PG_EXPORTER_PORT) for h in hosts_in("postgresql")]
    out += [(h, gw_metrics_port()) for h in hosts_in("litellm_gateway")]
    return out


def test_every_endpoint_answers_the_monitoring_host():
    for host, port in endpoints():
        text = scrape(host, port)
        assert "# TYPE" in text, f"{host}:{port} answered no metrics"
    pg = scrape(hosts_in("postgresql")[0], PG_EXPORTER_PORT)
    assert sample_sum(pg, "pg_up") == 1, "postgres exporter cannot reach PostgreSQL (pg_monitor role, peer)"
    # the TLS expiry textfile read every certificate it watches (else its alert is blind)
    node = scrape(hosts_in("postgresql")[0], NODE_PORT)
    present = [line for line in node.splitlines() if line.startswith("pglog_tls_certificate_present{")]
    assert present and all(line.endswith(" 1") for line in present), present
    assert "pglog_tls_certificate_not_after_seconds{" in node


@pytest.mark.parametrize("which", ["node", "postgres", "gateway"])
def test_metrics_ports_closed_to_other_hosts(which):
    """This machine is on the bed network but not in group monitoring: dropped."""
    host, port = {"node": (hosts_in("litellm_gateway")[0], NODE_PORT),
                  "postgres": (hosts_in("postgresql")[0], PG_EXPORTER_PORT),
                  "gateway": (hosts_in("litellm_gateway")[0], gw_metrics_port())}[which]
    with pytest.raises(OSError):
        socket.create_connection((address(host), port), timeout=3).close()


def test_prometheus_scrapes_every_target():
    def all_up() -> bool:
        targets = prometheus("/api/v1/targets")["data"]["activeTargets"]
        return bool(targets) and all(t["health"] == "up" for t in targets)

    wait("every scrape target up", all_up, 90, every=3)
    jobs = {t["labels"]["job"] for t in prometheus("/api/v1/targets")["data"]["activeTargets"]}
    assert {"node", "postgres", "pglog_gateway", "prometheus", "alertmanager"} <= jobs
    # one database host runs no Patroni and no etcd: their jobs (patroni: min_hosts 2; etcd: no
    # such group) are left out, not scraped down
    assert not {"patroni", "etcd"} & jobs


def test_rules_loaded_and_healthy_bed_has_no_firing_alert():
    groups = prometheus("/api/v1/rules")["data"]["groups"]
    names = {r["name"] for g in groups for r in g["rules"]}
    assert {"PostgresDown", "PglogWriterOffline", "PglogRecordsDropped", "GatewayDown"} <= names
    assert all(r.get("health") == "ok" for g in groups for r in g["rules"]), groups
    assert prometheus_firing() == []
    assert alertmanager_active() == []


def test_logger_metrics_count_the_calls_made():
    gw = hosts_in("litellm_gateway")[0]
    port = gw_metrics_port()

    def now() -> dict[str, float]:
        text = scrape(gw, port)
        return {name: sample_sum(text, name) for name in
                ("pglog_requests_total", "pglog_records_written_total", "pglog_records_enqueued_total",
                 "pglog_response_to_row_seconds_count", "pglog_tokens_total")}

    before = now()
    calls = 3
    for i in range(calls):
        status, _, body, _ = chat({"model": model_names()[0], "messages": [{"role": "user", "content": f"m{i}"}]},
                                  key=lab_secrets()["litellm_master_key"])
        assert status == 200, body
    wait("the metrics to count the calls",
         lambda: now()["pglog_records_written_total"] - before["pglog_records_written_total"] >= calls, 30)
    after = now()
    for name in ("pglog_requests_total", "pglog_records_written_total", "pglog_records_enqueued_total",
                 "pglog_response_to_row_seconds_count"):
        assert after[name] - before[name] == calls, (name, before[name], after[name])
    assert after["pglog_tokens_total"] > before["pglog_tokens_total"]
    text = scrape(gw, port)
    for gauge in ("pglog_writer_online", "pglog_queue_depth", "pglog_spool_bytes", "pglog_pool_size"):
        assert f"\n{gauge}" in text or text.startswith(gauge), f"{gauge} missing"
    assert sample_sum(text, "pglog_writer_online") == 1
    assert mon_host()  # the scrapes above ran there
