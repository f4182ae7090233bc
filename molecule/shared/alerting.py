"""What the monitoring host sees, for the bed tests: Prometheus' and Alertmanager's HTTP APIs,
the metrics endpoints of every host and the lab webhook sink's file -- all read ON the
monitoring host (podman exec + curl), the only host the metrics ports answer."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from typing import Any, Callable

from bedlib import ADDRESSES, BED, hosts_in, inventory_vars

SINK_FILE = "/var/lib/pglog-alert-sink/notifications.jsonl"  # roles/monitoring vars/main.yml


def mon_host() -> str:
    return hosts_in("monitoring")[0]


def address(container: str) -> str:
    return ADDRESSES[container.removeprefix(f"{BED}-")]


def _port(name: str, default: int) -> int:
    return int(inventory_vars(mon_host()).get(name, default))


def on_monitor(cmd: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", "exec", mon_host(), "sh", "-c", cmd],
                          capture_output=True, text=True, timeout=timeout, check=False)


def http_get(url: str) -> str:
    p = on_monitor(f"curl -sS --fail --max-time 10 {shlex.quote(url)}")
    if p.returncode != 0:
        raise AssertionError(f"GET {url} from the monitoring host failed: {p.stderr.strip()[-300:]}")
    return p.stdout


def scrape(container: str, port: int) -> str:
    return http_get(f"http://{address(container)}:{port}/metrics")


def prometheus(path: str) -> Any:
    return json.loads(http_get(f"http://{address(mon_host())}:{_port('monitoring_prometheus_port', 9090)}{path}"))


def prometheus_firing() -> list[dict]:
    return [a for a in prometheus("/api/v1/alerts")["data"]["alerts"] if a["state"] == "firing"]


def alertmanager_active() -> list[dict]:
    """Alerts Alertmanager holds as active (not resolved, not silenced)."""
    url = (f"http://{address(mon_host())}:{_port('monitoring_alertmanager_port', 9093)}"
           "/api/v2/alerts?active=true&silenced=false&inhibited=false")
    return json.loads(http_get(url))


def active_names() -> set[str]:
    return {a["labels"]["alertname"] for a in alertmanager_active()}


def sink_notifications() -> list[dict]:
    """Webhook payloads received by the lab sink, oldest first."""
    p = on_monitor(f"cat {SINK_FILE} 2>/dev/null || true")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def sink_saw(alertname: str, status: str, since: float) -> bool:
    """Did the sink receive a notification about alertname with this status after `since`?"""
    for n in sink_notifications():
        if n["received"] < since:
            continue
        for a in n["payload"].get("alerts", []):
            if a["labels"].get("alertname") == alertname and a.get("status") == status:
                return True
    return False


def wait(what: str, check: Callable[[], bool], timeout: float, every: float = 1.0) -> float:
    """Seconds until check() held; AssertionError after timeout."""
    t0 = time.time()
    while True:
        try:
            if check():
                return round(time.time() - t0, 1)
        except (AssertionError, ValueError, subprocess.TimeoutExpired):
            pass  # the API not answering yet counts as "not yet"
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def wait_no_alert(timeout: float = 240) -> float:
    """Bounded wait until neither Prometheus nor Alertmanager has an alert firing (earlier
    tests' faults resolve within the lab's alert timings: `for` <= 30 s, 5 s scrapes and
    evaluations, 1 min windows); fails naming what still fires."""
    try:
        secs = wait("no firing alert", lambda: not prometheus_firing() and not alertmanager_active(), timeout, every=3)
    except AssertionError:
        names = sorted({a["labels"]["alertname"] for a in prometheus_firing() + alertmanager_active()})
        raise AssertionError(f"alerts still firing after {timeout} s on a repaired bed: {names}") from None
    print(f"no firing alert after {secs} s")
    return secs


def sample_sum(text: str, name: str) -> float:
    """Sum of every sample of metric `name` (all label sets) in an exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
