"""The logging package's Prometheus metrics: counted by the writer thread, served on a port of
their own, summed over several worker processes (multiprocess mode, as with num_workers: 2)."""

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import query
from helpers import make_slo
from litellm_pglog import records
from litellm_pglog.config import Settings
from litellm_pglog.metrics import Endpoint, Metrics
from litellm_pglog.writer import Writer
from pgcluster import wait_until


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid")))] = s.value
    return out


def value(reg_or_text, name, **labels) -> float:
    text = reg_or_text if isinstance(reg_or_text, str) else _render(reg_or_text)
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


def _render(registry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_publish_adds_what_the_counters_moved_once():
    m = Metrics(multiprocess=False)
    counters = {"enqueued": 5, "written": 4, "failed": 1, "dropped": 0}
    gauges = {"queue_depth": 1, "writer_online": 1, "spool_bytes": 0}
    m.publish(counters, lambda: gauges)
    m.publish(counters, lambda: gauges)  # nothing moved: nothing added
    counters["written"] = 5
    m.publish(counters, lambda: gauges)
    assert value(m.registry, "pglog_records_enqueued_total") == 5
    assert value(m.registry, "pglog_records_written_total") == 5
    assert value(m.registry, "pglog_records_rejected_total") == 1  # stats.py's `failed`
    assert value(m.registry, "pglog_records_dropped_total") == 0
    assert value(m.registry, "pglog_writer_online") == 1


def test_rows_are_counted_by_model_status_tokens_and_cost():
    m = Metrics(multiprocess=False)
    for i, status in enumerate(("success", "success", "failure")):
        m.observe_row(records.prepare(records.capture(make_slo(i, status=status)), 262_144))
    assert value(m.registry, "pglog_requests_total", model="gpt-stub", status="success") == 2
    assert value(m.registry, "pglog_requests_total", model="gpt-stub", status="failure") == 1
    assert value(m.registry, "pglog_upstream_errors_total", model="gpt-stub") == 1
    assert value(m.registry, "pglog_tokens_total", model="gpt-stub", kind="prompt") == 4 + 5 + 6
    assert value(m.registry, "pglog_cost_usd_total", model="gpt-stub") == pytest.approx(0.000006)


def test_a_batch_counts_as_its_rows_one_by_one():
    """observe_rows sums per label set before it touches the counters: same totals as one
    observe_row per row, across models, statuses, zero tokens and zero cost."""
    rows = []
    for i in range(40):
        row = records.prepare(records.capture(make_slo(i, status=("success", "failure")[i % 4 == 0])), 262_144)
        row["model"] = ("m-a", "m-b", "")[i % 3]
        if i % 5 == 0:
            row["prompt_tokens"], row["cost_usd"] = 0, 0.0
        rows.append(row)
    one_by_one, batched = Metrics(multiprocess=False), Metrics(multiprocess=False)
    for row in rows:
        one_by_one.observe_row(row)
    batched.observe_rows(rows[:17])
    batched.observe_rows(rows[17:])
    expected, got = samples(_render(one_by_one.registry)), samples(_render(batched.registry))
    for name in ("pglog_requests_total", "pglog_upstream_errors_total", "pglog_tokens_total", "pglog_cost_usd_total"):
        assert any(n == name for n, _ in expected), name
    assert got.keys() == expected.keys()
    assert all(got[k] == pytest.approx(v) for k, v in expected.items())
    assert value(batched.registry, "pglog_requests_total", model="m-b", status="failure") > 0


def test_writer_thread_moves_the_metrics_by_the_records_written(writer_env, clean_db):
    w = Writer(Settings.from_env(), metrics=Metrics(multiprocess=False))
    w.start()
    try:
        for i in range(7):
            w.submit(records.capture(make_slo(i)))
        assert wait_until(lambda: value(w.metrics.registry, "pglog_records_written_total") == 7, 20)
        reg = w.metrics.registry
        assert value(reg, "pglog_records_enqueued_total") == 7
        assert value(reg, "pglog_requests_total", model="gpt-stub", status="success") == 7
        assert value(reg, "pglog_response_to_row_seconds_count") == 7
        assert value(reg, "pglog_batch_insert_seconds_count") >= 1
        assert wait_until(lambda: value(w.metrics.registry, "pglog_writer_online") == 1, 5)
        assert value(reg, "pglog_pool_size") >= 1
    finally:
        w.stop(timeout=5)
    assert query(clean_db, "SELECT count(*) FROM requests")[0][0] == 7


_WORKER = textwrap.dedent("""
    import sys, time
    from litellm_pglog.metrics import Endpoint, Metrics
    m = Metrics()
    assert m.multiprocess
    m.publish({"written": int(sys.argv[2])}, lambda: {"writer_online": int(sys.argv[3]), "queue_depth": 2})
    Endpoint(m, "127.0.0.1", int(sys.argv[1]), retry_s=0.2).start()
    print("ready", flush=True)
    sys.stdin.readline()   # until the test says stop
    m.process_exiting()
""")


def test_two_workers_one_endpoint_summed_and_handed_over(tmp_path):
    """num_workers: 2 -- each worker writes its own files; whichever binds the port serves the
    sum; when it dies the other takes the port over."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(port), str(n), str(online)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for n, online in ((3, 1), (4, 0))]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        assert wait_until(lambda: _answers(port), 5)
        text = scrape(port)
        assert value(text, "pglog_records_written_total") == 7
        assert value(text, "pglog_queue_depth") == 4  # livesum
        assert value(text, "pglog_writer_online") == 0  # livemin: one worker offline
        # the one serving goes away: the other binds within its retry interval
        server = next(p for p in procs if _serves(p.pid, port))
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(10)
        assert wait_until(lambda: _answers(port), 5)
        text = scrape(port)
        assert value(text, "pglog_records_written_total") == 7  # counters of a dead worker stay
        assert value(text, "pglog_queue_depth") == 2  # its live gauges no longer count
    finally:
        for p in procs:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
                p.wait(10)


def _answers(port: int) -> bool:
    try:
        scrape(port)
        return True
    except OSError:
        return False


def _serves(pid: int, port: int) -> bool:
    """Is pid the process listening on port? (/proc: its socket inodes vs /proc/net/tcp)"""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == port and parts[3] == "0A" and parts[9] in inodes:
                return True
    return False


def test_endpoint_binds_only_the_address_it_is_given():
    m = Metrics(multiprocess=False)
    port = free_port()
    ep = Endpoint(m, "127.0.0.1", port)
    ep.start()
    try:
        assert "pglog_records_written_total" in scrape(port)
        other = [a for a in _local_addresses() if a != "127.0.0.1"]
        if not other:
            pytest.skip("no address besides loopback on this host")
        with pytest.raises(OSError):
            socket.create_connection((other[0], port), timeout=2).close()
    finally:
        ep.stop()


def _local_addresses() -> list[str]:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if ":" not in a]


def test_settings_read_the_metrics_address():
    base = {"PGLOG_DB_HOST": "db", "PGLOG_DB_NAME": "n", "PGLOG_DB_USER": "u"}
    s = Settings.from_env(base)
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 0)
    s = Settings.from_env(dict(base, PGLOG_METRICS_HOST="10.0.0.5", PGLOG_METRICS_PORT="9464"))
    assert (s.metrics_host, s.metrics_port) == ("10.0.0.5", 9464)
