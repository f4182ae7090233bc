"""Resilience drills (issue 7): no log record lost under faults and load.

Each drill runs molecule/shared/loadgen.py ON the db container against the gateway's bed
address (traffic stays inside the bed), injects one fault, repairs it, waits (bounded) until
the logging has settled, and prints ONE JSON line with its figures, also appended to
$PGLOG_LAB_DIR/drills.jsonl. Figures come from the database itself (psql on the db host):

  answered        calls the gateway answered 200 (the load generator saw the call id)
  request_rows    rows in `requests` with the drill's run tag
  response_rows   rows in `responses` joined to those
  lost            answered calls without a request row
  duplicated      request rows beyond one per call id + responses beyond one per request
  orphans         run request rows without a response + responses without a request (table-wide)

Knobs (environment): PGLOG_DRILL_DB_DOWN_S (120), PGLOG_DRILL_PARTITION_S (60),
PGLOG_DRILL_RATE (calls/s, 4), PGLOG_DRILL_SETTLE_S (max wait for the log to settle, 180).
Every drill repairs what it broke in a `finally`, so a failing drill leaves the bed usable.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import string
import subprocess
import threading
import time
from pathlib import Path

import pytest

import alerting
import bedlib
from bedlib import (
    ADDRESSES,
    CLIENT_CA,
    GATEWAY_CONFIG_DIR,
    GATEWAY_ENV_FILE,
    GATEWAY_SCHEME,
    GATEWAY_UNIT,
    LAB_DIR,
    PG_UNIT,
    PGLOG_CLI,
    hosts_in,
    inventory_vars,
    lab_secrets,
    run_playbook,
    wait_for,
)

OUT = LAB_DIR / "drills.jsonl"

DB_DOWN_S = float(os.environ.get("PGLOG_DRILL_DB_DOWN_S", "120"))
PARTITION_S = float(os.environ.get("PGLOG_DRILL_PARTITION_S", "60"))
RATE = float(os.environ.get("PGLOG_DRILL_RATE", "4"))
SETTLE_S = float(os.environ.get("PGLOG_DRILL_SETTLE_S", "180"))
# Monitoring (issue 12): bounds for an alert to reach Alertmanager after the fault and to be
# resolved after the repair. The lab's rule durations (inventory/lab monitoring.yml: scrape and
# evaluation every 5 s, PostgresDown for 10 s, group_wait 2 s) put both near 20 s; the bound
# leaves room for a loaded host.
ALERT_FIRE_S = float(os.environ.get("PGLOG_DRILL_ALERT_FIRE_S", "90"))
ALERT_RESOLVE_S = float(os.environ.get("PGLOG_DRILL_ALERT_RESOLVE_S", "90"))

DB = hosts_in("postgresql")[0]
GW = hosts_in("litellm_gateway")[0]
DB_ADDR, GW_ADDR = ADDRESSES["db"], ADDRESSES["gateway"]
GW_UNIT = GATEWAY_UNIT
ENV_FILE = GATEWAY_ENV_FILE
CLI = PGLOG_CLI
DROPIN = f"/etc/systemd/system/{GATEWAY_UNIT}.d/zz-resilience-drill.conf"
DRILL_ENV = f"{GATEWAY_CONFIG_DIR}/resilience-drill.env"
LOADGEN = "/usr/local/lib/pglog-drill/loadgen.py"
KEY_FILE = "/root/.pglog-drill-key"
STOP_FILE = "/tmp/pglog-drill-stop"
NFT_TABLE = "pglog_drill"
MONITORED = bool(hosts_in("monitoring"))


# --- plumbing ---------------------------------------------------------------------------

def sh(container: str, cmd: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["podman", "exec", container, "sh", "-c", cmd],
                       capture_output=True, text=True, timeout=timeout, check=False)
    if check and p.returncode != 0:
        raise AssertionError(f"[{container}] {cmd!r} exited {p.returncode}: {p.stderr[-800:]}")
    return p


def model() -> str:
    return inventory_vars(GW)["litellm_gateway_models"][0]["name"]


def port() -> int:
    return int(inventory_vars(GW).get("litellm_gateway_port", 4000))


def run_tag(name: str) -> str:
    return f"drill-{name}-{time.strftime('%H%M%S')}-{secrets.token_hex(3)}"


class Load:
    """The load generator running on the db container (podman exec in the background), or on
    `host` (a drill that destroys the db container runs it on the gateway host)."""

    def __init__(self, tag: str, duration: float, count: int, rate: float = RATE, host: str = DB,
                 url: str | None = None, **opts: object) -> None:
        self.tag, self.host = tag, host
        self.limit = duration + 90  # bounded: duration + the last calls' timeout + slack
        url = url or f"{GATEWAY_SCHEME}://{GW_ADDR}:{port()}/v1/chat/completions"
        if url.startswith("https:"):
            bedlib.install_ca(host)  # idempotent; the load generator verifies the gateway's certificate
        args = ["--url", url, "--key-file", KEY_FILE, "--ca-file", CLIENT_CA,
                "--model", model(), "--tag", tag, "--rate", str(rate), "--duration", str(duration),
                "--count", str(count), "--stop-file", STOP_FILE, "--timeout", "30"]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        sh(host, f"rm -f {STOP_FILE}")
        self.proc = subprocess.Popen(["podman", "exec", host, "python3", LOADGEN, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def stop(self) -> None:
        sh(self.host, f"touch {STOP_FILE}")

    def wait(self) -> tuple[dict, list[dict]]:
        try:
            out, err = self.proc.communicate(timeout=self.limit)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError(f"load generator {self.tag} still running after {self.limit} s")
        assert self.proc.returncode == 0, f"load generator failed: {err[-800:]}"
        doc = json.loads(out.strip().splitlines()[-1])
        return doc["summary"], doc["calls"]


def psql(sql: str) -> list[list[str]]:
    p = sh(DB, f"runuser -u postgres -- psql -d {shlex.quote(inventory_vars(DB).get('pglog_db_name', 'litellm_db'))}"
               f" -XAt -F '|' -v ON_ERROR_STOP=1 -c {shlex.quote(sql)}", timeout=60)
    return [line.split("|") for line in p.stdout.splitlines() if line]


def db_rows(tag: str) -> tuple[dict[str, list[int]], int]:
    """call_id -> response counts (one entry per request row) of a run; table-wide orphan responses."""
    assert all(c.isalnum() or c == "-" for c in tag)
    rows = psql(
        "SELECT q.call_id, count(r.id) FROM requests q LEFT JOIN responses r ON r.request_id = q.id"
        f" WHERE q.tags @> jsonb_build_array('run:{tag}') GROUP BY q.id, q.call_id")
    by_call: dict[str, list[int]] = {}
    for call_id, n in rows:
        by_call.setdefault(call_id, []).append(int(n))
    orphan_resp = int(psql("SELECT count(*) FROM responses r LEFT JOIN requests q ON q.id = r.request_id"
                           " WHERE q.id IS NULL")[0][0])
    return by_call, orphan_resp


def status() -> dict:
    """`litellm-pglog status --json` with the gateway's environment (spool depth, counters)."""
    p = sh(GW, f"set -a; . {ENV_FILE}; [ ! -f {DRILL_ENV} ] || . {DRILL_ENV}; set +a; {CLI} status --json",
           timeout=60, check=False)
    assert p.stdout.strip(), f"litellm-pglog status printed nothing: {p.stderr[-500:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def main_pid() -> int:
    return int(sh(GW, f"systemctl show -p MainPID --value {GW_UNIT}").stdout.strip() or 0)


def counters() -> dict:
    """Counters of the running gateway process (its stats-<pid>.json)."""
    st = status()
    snap = st["stats"].get(f"stats-{main_pid()}.json", {})
    return dict(snap.get("counters", {}), spool_segments=st["spool_segments"])


def figures(tag: str, calls: list[dict]) -> dict:
    answered = {c["call_id"] for c in calls if c["status"] == 200 and c["call_id"]}
    by_call, orphan_resp = db_rows(tag)
    request_rows = sum(len(v) for v in by_call.values())
    response_rows = sum(sum(v) for v in by_call.values())
    lost = len(answered - set(by_call))
    duplicated = (request_rows - len(by_call)) + sum(n - 1 for v in by_call.values() for n in v if n > 1)
    orphans = sum(1 for v in by_call.values() for n in v if n == 0) + orphan_resp
    return {"answered": len(answered), "request_rows": request_rows, "response_rows": response_rows,
            "lost": lost, "duplicated": duplicated, "orphans": orphans,
            "rows_of_unanswered_calls": len(set(by_call) - answered)}


def settle(tag: str, calls: list[dict], expect_lost: int = 0) -> dict:
    """Poll (bounded by SETTLE_S) until the answered calls are in the database and the spool
    is empty; returns the last figures either way (the assertions say what differed)."""
    t0 = time.time()
    while True:
        f = figures(tag, calls)
        f["spool_segments_after"] = status()["spool_segments"]
        done = f["lost"] <= expect_lost and f["orphans"] == 0 and f["spool_segments_after"] == 0
        if done or time.time() - t0 > SETTLE_S:
            f["settle_s"] = round(time.time() - t0, 1)
            return f
        time.sleep(2)


def gateway_answers() -> bool:
    probe = (f"python3 {LOADGEN} --url {GATEWAY_SCHEME}://{GW_ADDR}:{port()}/v1/chat/completions"
             f" --key-file {KEY_FILE} --ca-file {CLIENT_CA}"
             f" --model {model()} --tag probe --count 1 --rate 1 --timeout 10")
    p = sh(DB, probe, timeout=30, check=False)
    try:
        return json.loads(p.stdout)["summary"]["answered"] == 1
    except (ValueError, KeyError):
        return False


class AlertWatch:
    """Watches Alertmanager's active alerts during one drill, from a thread polling every 2 s
    (drills block in their load and repair steps): which alert became active when, counted from
    the fault. After the repair, resolved() waits (bounded) until the drill's alert has left
    the API and the lab sink got it resolved; check() asserts it fired in time and reached the
    sink. A bed without a monitoring host watches nothing and checks nothing."""

    POLL_S = 2.0

    def __init__(self, expected: str) -> None:
        self.expected = expected
        self.fired: dict[str, float] = {}
        self.resolve_s: float | None = None
        self._gone_at: float | None = None
        self.sink_resolved = False
        self.t_fault = self.t_repair = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def fault(self) -> None:
        """Call right before the fault is injected."""
        self.t_fault = time.time()
        if MONITORED:
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                active = alerting.active_names()
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                active = None  # the API did not answer: neither fired nor resolved
            if active is not None:
                now = time.time()
                for name in active - set(self.fired):
                    self.fired[name] = round(now - self.t_fault, 1)
                if self.expected in self.fired and self.expected not in active and self._gone_at is None:
                    self._gone_at = now
            self._stop.wait(self.POLL_S)

    def repaired(self) -> None:
        """Call right after the repair; the poll goes on until resolved()."""
        self.t_repair = time.time()

    def resolved(self) -> None:
        """Bounded wait (ALERT_RESOLVE_S from now) until the poll saw the drill's alert leave
        the API, then for the sink's resolved notification; the resolve time counts from the
        repair (the drill's own steps after the repair may have taken part of it)."""
        if not MONITORED:
            return
        try:
            if self.expected in self.fired:
                alerting.wait(f"{self.expected} to resolve", lambda: self._gone_at is not None, ALERT_RESOLVE_S)
                self.resolve_s = round(self._gone_at - self.t_repair, 1)
                alerting.wait(f"the webhook sink to get {self.expected} resolved",
                              lambda: alerting.sink_saw(self.expected, "resolved", self.t_fault), ALERT_RESOLVE_S)
                self.sink_resolved = True
        except AssertionError:
            pass  # check() fails on it, after the drill's line is recorded with what was seen
        finally:
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(timeout=30)

    def figures(self) -> dict:
        return {"alert": self.expected, "alert_fire_s": self.fired.get(self.expected),
                "alert_resolve_s": self.resolve_s, "alerts_fired": dict(self.fired),
                "alert_resolved_in_sink": self.sink_resolved}

    def check(self, drill: int) -> None:
        if not MONITORED:
            return
        fire = self.fired.get(self.expected)
        assert fire is not None and fire <= ALERT_FIRE_S, (
            f"drill {drill}: {self.expected} not active within {ALERT_FIRE_S} s of the fault: {self.fired}")
        assert alerting.sink_saw(self.expected, "firing", self.t_fault), (
            f"drill {drill}: the webhook sink never got {self.expected} firing")
        assert self.resolve_s is not None and self.resolve_s <= ALERT_RESOLVE_S + AlertWatch.POLL_S, (
            f"drill {drill}: {self.expected} not resolved within {ALERT_RESOLVE_S} s of the repair: {self.figures()}")
        assert self.sink_resolved, f"drill {drill}: the webhook sink never got {self.expected} resolved"


def unit_active(container: str, unit: str) -> bool:
    return sh(container, f"systemctl is-active {unit}", check=False).stdout.strip() == "active"


def record(drill: int, name: str, tag: str, summary: dict, figs: dict, **extra: object) -> dict:
    line = {"drill": drill, "name": name, "tag": tag, "sent": summary["sent"],
            "statuses": summary["statuses"], **figs, **extra}
    text = json.dumps(line, sort_keys=False)
    print("\nDRILL " + text)
    with OUT.open("a", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return line


def assert_no_loss(line: dict) -> None:
    bad = {k: line[k] for k in ("lost", "duplicated", "orphans", "spool_segments_after") if line[k] != 0}
    assert not bad, f"drill {line['drill']} ({line['name']}): non-zero {bad}; figures {line}"
    assert line["answered"] > 0, f"drill {line['drill']}: no call answered"


# --- bed preparation ----------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def drill_bed():
    """Loadgen and key on the db host (key via podman cp: in no command line); the bed must
    answer before the first drill. Removes the key afterwards."""
    LAB_DIR.mkdir(parents=True, exist_ok=True)
    OUT.write_text("")  # the file holds the lines of this run only
    key = lab_secrets()["litellm_master_key"]
    sh(DB, f"mkdir -p {os.path.dirname(LOADGEN)}; umask 077; : > {KEY_FILE}")
    subprocess.run(["podman", "cp", str(Path(bedlib.__file__).with_name("loadgen.py")), f"{DB}:{LOADGEN}"],
                   check=True, timeout=60)
    bedlib.install_ca(DB)  # the client verifies the gateway's certificate
    subprocess.run(["podman", "exec", "-i", DB, "sh", "-c", f"umask 077; cat > {KEY_FILE}"],
                   input=key, text=True, check=True, timeout=60)
    wait_for("the gateway to answer", gateway_answers, 120, every=3)
    yield
    sh(DB, f"rm -f {KEY_FILE} {STOP_FILE}", check=False)


# --- the drills -----------------------------------------------------------------------------

def timer_services(container: str) -> list[str]:
    """The services the bundle's timers (unit files in /etc/systemd/system) start on a host."""
    out = sh(container, "for t in /etc/systemd/system/*.timer; do [ -e \"$t\" ] && "
                        "systemctl show -P Unit \"${t##*/}\"; done; true").stdout
    return sorted(set(out.split()))


def test_drill1_db_down():
    """PostgreSQL stopped for DB_DOWN_S under load: answers stay 200, everything spooled is
    replayed once the database is back. Every timer of the database host fires during the
    outage (its service started by hand) and none may start PostgreSQL again: a unit with
    Requires= on it did (the rollup refresh, every 5 min), which ended the outage early and
    kept PostgresDown from firing. Monitoring: PostgresDown reaches Alertmanager and the lab
    webhook sink within ALERT_FIRE_S of the stop and resolves within ALERT_RESOLVE_S of the
    start (times in the drill's line)."""
    tag = run_tag("dbdown")
    lead = 5
    load = Load(tag, duration=lead + DB_DOWN_S + 10, count=10_000)
    peak = 0
    watch = AlertWatch("PostgresDown")
    timers = timer_services(DB)
    started_pg: list[str] = []
    states: dict[str, str] = {}
    try:
        time.sleep(lead)
        watch.fault()
        sh(DB, f"systemctl stop {PG_UNIT}", timeout=120)
        for unit in timers:
            sh(DB, f"systemctl start {unit}", timeout=120, check=False)
            states[unit] = sh(DB, f"systemctl show -P ActiveState {unit}", check=False).stdout.strip()
            if unit_active(DB, PG_UNIT):
                started_pg.append(unit)
                sh(DB, f"systemctl stop {PG_UNIT}", timeout=120)
        sh(DB, "systemctl reset-failed", check=False)
        t_end = time.time() + DB_DOWN_S
        while time.time() < t_end:
            peak = max(peak, status()["spool_segments"])
            time.sleep(min(3, max(0, t_end - time.time())))
    finally:
        sh(DB, f"systemctl start {PG_UNIT}", timeout=120)
        watch.repaired()
    wait_for("postgresql active", lambda: unit_active(DB, PG_UNIT), 60)
    watch.resolved()
    summary, calls = load.wait()
    line = record(1, "db_down", tag, summary, settle(tag, calls), down_s=DB_DOWN_S,
                  spool_segments_peak=peak, timer_services=states, started_postgresql=started_pg,
                  **watch.figures())
    assert timers, "no timer on the database host (the upkeep and dump timers are missing)"
    assert not started_pg, f"started PostgreSQL while it was stopped: {started_pg}"
    assert summary["statuses"] == {"200": summary["sent"]}, f"not every call answered 200: {summary['statuses']}"
    assert peak > 0, "nothing was spooled while the database was down (fault not effective?)"
    assert_no_loss(line)
    watch.check(1)


def test_drill2_partition():
    """gateway -> db:5432 dropped (nftables on the gateway) for PARTITION_S. Monitoring: the
    database stays up (PostgresDown must not be the signal); the writer going offline is, so
    PglogWriterOffline must fire and resolve within the same bounds as drill 1."""
    tag = run_tag("partition")
    lead = 5
    load = Load(tag, duration=lead + PARTITION_S + 10, count=10_000)
    rules = (f"table inet {NFT_TABLE} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n"
             f"  ip daddr {DB_ADDR} tcp dport 5432 drop\n }}\n}}")
    peak = 0
    watch = AlertWatch("PglogWriterOffline")
    try:
        time.sleep(lead)
        watch.fault()
        sh(GW, f"nft -f - <<'EOF'\n{rules}\nEOF")
        t_end = time.time() + PARTITION_S
        rows_start = sum(len(v) for v in db_rows(tag)[0].values())
        probe = sh(GW, f"python3 -c 'import socket; socket.create_connection((\"{DB_ADDR}\", 5432), 3)'",
                   check=False)
        while time.time() < t_end:
            peak = max(peak, status()["spool_segments"])
            time.sleep(min(10, max(0, t_end - time.time())))
        rows_end = sum(len(v) for v in db_rows(tag)[0].values())
    finally:
        sh(GW, f"nft delete table inet {NFT_TABLE}", check=False)
        watch.repaired()
    assert sh(GW, f"nft list table inet {NFT_TABLE}", check=False).returncode != 0, "partition not removed"
    watch.resolved()
    summary, calls = load.wait()
    line = record(2, "partition", tag, summary, settle(tag, calls), partition_s=PARTITION_S,
                  spool_segments_peak=peak, new_connection_refused=probe.returncode != 0,
                  rows_written_during_partition=rows_end - rows_start, **watch.figures())
    assert probe.returncode != 0, "drill 2: the gateway could still connect to db:5432 (partition not effective)"
    assert summary["statuses"] == {"200": summary["sent"]}, f"not every call answered 200: {summary['statuses']}"
    assert_no_loss(line)
    watch.check(2)


def test_drill3_gateway_restart():
    """systemctl restart under load: SIGTERM drains the queue (database or spool), and no call
    is refused: litellm-gateway.socket keeps the listening socket open while LiteLLM starts
    again, so the calls made meanwhile wait in its backlog (before socket activation 49 of
    160 calls failed here, connection refused)."""
    tag = run_tag("restart")
    load = Load(tag, duration=40, count=10_000)
    time.sleep(10)
    pid_before = main_pid()
    sh(GW, f"systemctl restart {GW_UNIT}", timeout=120)
    back_s = wait_for("the gateway to answer after restart", gateway_answers, 120, every=1)
    summary, calls = load.wait()
    assert main_pid() != pid_before, "restart did not replace the process"
    line = record(3, "gateway_restart", tag, summary, settle(tag, calls), answering_again_s=back_s,
                  slowest_call_s=max((round(c["end"] - c["start"], 1) for c in calls), default=None))
    assert summary["statuses"] == {"200": summary["sent"]}, f"calls failed across the restart: {summary['statuses']}"
    assert_no_loss(line)


def test_drill4_gateway_killed():
    """SIGKILL under load. Design (writer.py): records wait in memory (SimpleQueue, at most
    PGLOG_FLUSH_MS=200 ms, then one INSERT) and are NOT written ahead to the spool, so a kill
    loses what was answered but not yet committed. Bound checked: lost <= calls answered in the
    last 2 s before the kill (flush interval 200 ms + insert + LiteLLM's async logging hop, with
    margin for a loaded machine), counting
    up to the moment `systemctl kill` returned (the signal lands in between)."""
    window = 2.0
    tag = run_tag("kill")
    load = Load(tag, duration=40, count=10_000)
    time.sleep(10)
    t_kill = time.time()
    sh(GW, f"systemctl kill -s KILL {GW_UNIT}")
    t_killed = time.time()  # the signal lands somewhere in [t_kill, t_killed]
    back_s = wait_for("the gateway to answer after SIGKILL (Restart=on-failure)", gateway_answers, 120, every=1)
    summary, calls = load.wait()
    in_window = sum(1 for c in calls if c["status"] == 200 and t_kill - window <= c["end"] <= t_killed)
    answered_before_kill = sum(1 for c in calls if c["status"] == 200 and c["end"] <= t_kill)
    figs = settle(tag, calls, expect_lost=in_window)
    lost_ids = {c["call_id"] for c in calls if c["status"] == 200} - set(db_rows(tag)[0])
    lost_ends = sorted(round(t_kill - c["end"], 3) for c in calls if c["call_id"] in lost_ids)
    line = record(4, "gateway_killed", tag, summary, figs, answered_before_kill=answered_before_kill,
                  answered_in_window_before_kill=in_window, window_s=window, bound=in_window,
                  kill_call_s=round(t_killed - t_kill, 3),
                  lost_answered_s_before_kill=lost_ends, answering_again_s=back_s)
    assert figs["duplicated"] == 0 and figs["orphans"] == 0, f"drill 4: {figs}"
    assert figs["lost"] <= in_window, (
        f"drill 4: lost {figs['lost']} > bound {in_window} (calls answered in the last {window} s)")


def test_drill6_spool_full():
    """PGLOG_SPOOL_MAX_MB=1 and PGLOG_MEMORY_MAX_RECORDS=40 (drop-in), database down, 20 KB
    prompts: the spool fills (counter spool_full, records held in memory), then memory fills
    (counter dropped, ERROR event=dropped). Never silent: lost == dropped. Monitoring:
    PglogRecordsDropped fires within ALERT_FIRE_S of the database stop and resolves (its window
    past the last drop) within ALERT_RESOLVE_S of the start."""
    tag = run_tag("spoolfull")
    env = "PGLOG_SPOOL_MAX_MB=1\nPGLOG_MEMORY_MAX_RECORDS=40\nPGLOG_STATS_INTERVAL_S=1\n"
    since = time.strftime("%Y-%m-%d %H:%M:%S")
    watch = AlertWatch("PglogRecordsDropped")
    try:
        sh(GW, f"mkdir -p {os.path.dirname(DROPIN)}; printf '%s' {shlex.quote(env)} > {DRILL_ENV};"
               f" printf '[Service]\\nEnvironmentFile={DRILL_ENV}\\n' > {DROPIN};"
               f" systemctl daemon-reload; systemctl restart {GW_UNIT}", timeout=120)
        wait_for("the gateway to answer with the drill limits", gateway_answers, 120, every=2)
        watch.fault()
        sh(DB, f"systemctl stop {PG_UNIT}", timeout=120)
        load = Load(tag, duration=60, count=150, rate=5, prompt_bytes=20_000)
        summary, calls = load.wait()
        time.sleep(3)  # stats are written every second
        during = counters()
    finally:
        sh(DB, f"systemctl start {PG_UNIT}", timeout=120)
        watch.repaired()
    try:
        wait_for("postgresql active", lambda: unit_active(DB, PG_UNIT), 60)
        figs = settle(tag, calls, expect_lost=during.get("dropped", 0))
        after = counters()
        journal = sh(GW, f"journalctl -u {GW_UNIT} --since {shlex.quote(since)} -o cat"
                         " | grep -c -e 'event=dropped' -e 'event=spool_full' || true").stdout.strip()
    finally:
        sh(GW, f"rm -f {DROPIN} {DRILL_ENV}; systemctl daemon-reload; systemctl restart {GW_UNIT}", timeout=120)
        wait_for("the gateway to answer with its own settings", gateway_answers, 120, every=2)
        watch.resolved()
    line = record(6, "spool_full", tag, summary, figs, spool_full=during.get("spool_full"),
                  dropped=during.get("dropped"), spooled=during.get("spooled"),
                  replayed_after=after.get("replayed"), error_events_in_journal=int(journal or 0),
                  **watch.figures())
    assert summary["statuses"] == {"200": summary["sent"]}, f"not every call answered 200: {summary['statuses']}"
    assert during.get("spool_full", 0) > 0, f"drill 6: counter spool_full is 0: {during}"
    assert figs["lost"] == during.get("dropped", 0), (
        f"drill 6: lost {figs['lost']} != counter dropped {during.get('dropped')} (a silent drop)")
    assert figs["duplicated"] == 0 and figs["orphans"] == 0 and figs["spool_segments_after"] == 0, figs
    watch.check(6)


# oversize: refused before parsing (the gateway's body limit); its failure row carries no tag
EXPECTED = {"ok": 200, "big": 200, "oversize": 413, "nul": 200, "malformed": 400, "nokey": 401,
            "wrongkey": 401, "unknown_model": 400}


def test_drill7_bad_requests():
    """Bad requests mixed into the load: right statuses, the gateway stays up, answered calls
    and unknown-model failures logged, NUL stored escaped."""
    tag = run_tag("bad")
    kinds = list(EXPECTED)
    load = Load(tag, duration=60, count=10 * len(kinds), rate=RATE, mix=",".join(kinds))
    summary, calls = load.wait()
    wrong = [(c["kind"], c["status"], (c.get("error") or "")[:80]) for c in calls if c["status"] != EXPECTED[c["kind"]]]
    by_kind = {k: {} for k in kinds}
    for c in calls:
        by_kind[c["kind"]][str(c["status"])] = by_kind[c["kind"]].get(str(c["status"]), 0) + 1
    unknown_ids = {c["call_id"] for c in calls if c["kind"] == "unknown_model" and c["call_id"]}
    figs = settle(tag, [c for c in calls if c["kind"] in ("ok", "big", "nul")])
    failure_rows = int(psql(
        "SELECT count(*) FROM responses r JOIN requests q ON q.id = r.request_id"
        f" WHERE q.tags @> jsonb_build_array('run:{tag}') AND r.status = 'failure'")[0][0])
    nul_escaped = int(psql(
        f"SELECT count(*) FROM requests WHERE tags @> jsonb_build_array('run:{tag}')"
        " AND payload::text LIKE '%with NUL %u0000 inside%'")[0][0])
    alive = gateway_answers() and unit_active(GW, GW_UNIT)
    line = record(7, "bad_requests", tag, summary, figs, by_kind=by_kind, wrong_status=wrong[:10],
                  failure_rows=failure_rows, unknown_model_calls=sum(by_kind["unknown_model"].values()),
                  unknown_model_with_call_id=len(unknown_ids), nul_rows_escaped=nul_escaped,
                  gateway_alive_after=alive)
    assert not wrong, f"drill 7: wrong statuses {wrong[:10]}"
    assert alive, "drill 7: gateway not answering afterwards"
    assert figs["lost"] == 0 and figs["duplicated"] == 0, figs
    assert failure_rows == sum(by_kind["unknown_model"].values()), (
        f"drill 7: {failure_rows} failure rows for {by_kind['unknown_model']} unknown-model calls")
    assert nul_escaped == by_kind["nul"].get("200", 0), f"drill 7: {nul_escaped} NUL rows stored escaped"


def test_drill5_password_rotation():
    """New writer password in the lab secret file, site.yml re-run on both hosts under load
    (the postgresql role changes the role's password, the gateway role rewrites the env file
    and restarts the gateway): logging resumes, nothing lost. Runs last: it is the longest."""
    tag = run_tag("rotate")
    secret = LAB_DIR / "secrets" / "pglog_writer_password"
    old = secret.read_text()
    assert " " not in old.strip(), "unexpected lookup file format (salt/encrypt?)"
    new = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(32))
    load = Load(tag, duration=900, count=100_000)
    try:
        time.sleep(5)
        secret.write_text(new + "\n")
        t0 = time.time()
        rc, out = run_playbook("site.yml", "--limit", f"{DB},{GW}")
        playbook_s = round(time.time() - t0, 1)
        time.sleep(10)  # load on the new password too
    finally:
        load.stop()
    summary, calls = load.wait()
    assert rc == 0, f"site.yml (rotation) failed:\n{out[-3000:]}"
    assert new not in out, "the new password appears in ansible output"
    env_ok = sh(GW, f"grep -c -F {shlex.quote(new)} {ENV_FILE}", check=False).stdout.strip() == "1"
    line = record(5, "password_rotation", tag, summary, settle(tag, calls), playbook_s=playbook_s,
                  gateway_env_has_new_password=env_ok)
    assert env_ok, "drill 5: the gateway env file does not hold the rotated password"
    assert_no_loss(line)
