"""Proxy latency with vs without the logger, interleaved A/B in one run, plus
response-to-row-visible latency under that load.

A: `litellm` with callbacks: litellm_pglog.callback.proxy_handler_instance (+ custom_auth)
B: the same config without the callback (custom_auth kept, so only the logger differs);
   with a third argument `null`, B has a callback that does nothing (bench/null_callback.py):
   then the difference is litellm_pglog's own cost, without LiteLLM's cost of having a callback;
   a fourth argument `pipe` runs A with bench/pipe_writer_prototype.py (the writer in its own
   process, a measurement prototype) instead of the package's callback, `null` gives A the
   do-nothing callback too: an A/A run, whose p50 difference is the noise floor of the host
Both run at the same time against the same stub; C client threads each alternate A and B
(order flipped every call). The run has R rounds (default 4), each with a fresh pair of
proxies, B started first in every other round; the p50 difference judged is the mean of the
rounds' differences, so a bias of start order or port cancels out (an A/A run shows what is left). Visibility: a poller reads new request rows every 10 ms; the delay
is first-seen minus the moment the client had the response (matched by x-litellm-call-id).
CPU: each proxy process's CPU time (all threads, /proc/<pid>/stat) and context switches from
the start of the load until every row is visible, per call, and the logger's own thread CPU per
call (writer_thread_cpu_s of its stats file): unlike latency at saturation these do not move
much with other load on the machine, so they are the figures to compare on a busy host.
Targets: p50(A) - p50(B) <= 1 ms at saturation (4 clients on 2 cores), <= 0.5 ms at 1 client;
visibility p99 <= 1000 ms. Prints JSON."""

import json
import shutil
import os
import sys
import tempfile
import threading
import time

from _rig import migrated_cluster, percentile

from pgcluster import DB  # noqa: E402
from proxyrig import TEAM_KEY, Proxy, Stub, http  # noqa: E402


def cpu_and_switches(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and context switches (all threads) so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
        except FileNotFoundError:  # thread ended meanwhile
            pass
    return cpu, switches


def writer_thread_cpu_s(proxy) -> float | None:
    """The logger's own thread CPU so far: its stats file (rewritten every 5 s here, and at exit)."""
    import glob

    files = glob.glob(os.path.join(proxy.workdir, "state", "stats-*.json"))
    if not files:
        return None
    with open(max(files, key=os.path.getmtime)) as fh:
        return json.load(fh).get("writer_thread_cpu_s")


def configure(a, b, baseline, logger, here):
    """A gets the logger under test (or a stand-in), B the baseline: the only difference."""
    a.env["PGLOG_STATS_INTERVAL_S"] = "5"
    if logger != "pglog":  # the prototype, or `null` for an A/A run that shows the bench's noise floor
        module = "pipe_writer_prototype" if logger == "pipe" else "null_callback"
        with open(a.config) as fh:
            cfg = fh.read()
        with open(a.config, "w") as fh:
            fh.write(cfg.replace("litellm_pglog.callback.proxy_handler_instance", module + ".instance"))
        a.env["PYTHONPATH"] = os.pathsep.join(p for p in (here, a.env.get("PYTHONPATH")) if p)
    with open(b.config) as fh:
        cfg = fh.read()
    with open(b.config, "w") as fh:
        replacement = "  callbacks: null_callback.instance\n" if baseline == "null" else ""
        fh.write(cfg.replace("  callbacks: litellm_pglog.callback.proxy_handler_instance\n", replacement))
    if baseline == "null":
        b.env["PYTHONPATH"] = os.pathsep.join(p for p in (here, b.env.get("PYTHONPATH")) if p)


def one_round(cluster, stub, tmp, r, n, clients, baseline, logger, here):
    """One round: a fresh pair of proxies, B started first in odd rounds (a process started
    first, or listening on the lower port, can be systematically faster or slower on a loaded
    host: the A/A runs of an earlier rig showed +9.5 ms between two identical proxies)."""
    a = Proxy(os.path.join(tmp, f"a{r}"), stub.port, cluster.env())
    b = Proxy(os.path.join(tmp, f"b{r}"), stub.port, cluster.env())
    configure(a, b, baseline, logger, here)
    seen: dict[str, float] = {}
    received: dict[str, float] = {}
    lat = {"a": [], "b": []}
    stop = threading.Event()

    def poll():
        last = 0
        with cluster.admin(DB) as conn:
            cur = conn.cursor()
            while not stop.is_set():
                cur.execute("SELECT id, call_id FROM requests WHERE id > %s ORDER BY id", (last,))
                now = time.time()
                for rid, call_id in cur.fetchall():
                    seen.setdefault(call_id, now)
                    last = max(last, rid)
                time.sleep(0.01)

    def client(k):
        for i in range(n // clients):
            order = (a, b) if (i + k) % 2 == 0 else (b, a)
            for p in order:
                body = {"model": "gpt-stub", "messages": [{"role": "user", "content": f"ab {r} {k} {i} lorem ipsum"}]}
                t0 = time.perf_counter()
                status, headers, _ = http("POST", p.url + "/v1/chat/completions", body, TEAM_KEY)
                dt_ms = (time.perf_counter() - t0) * 1000
                assert status == 200
                lat["a" if p is a else "b"].append(dt_ms)
                if p is a:
                    received[headers.get("x-litellm-call-id")] = time.time()

    try:
        for p in ((b, a) if r % 2 else (a, b)):
            p.start()
        for p in (a, b):  # warm-up: first calls are slow (~800 ms)
            for _ in range(10):
                http("POST", p.url + "/v1/chat/completions",
                     {"model": "gpt-stub", "messages": [{"role": "user", "content": "warm"}]}, TEAM_KEY)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        time.sleep(5.5)  # a stats file written after the warm-up
        writer_cpu0 = writer_thread_cpu_s(a)
        usage0 = {p: cpu_and_switches(p.proc.pid) for p in (a, b)}
        t0 = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        deadline = time.monotonic() + (15 if logger != "null" else 0)
        while time.monotonic() < deadline and not all(c in seen for c in received):
            time.sleep(0.05)
        stop.set()
        usage = {p: [x1 - x0 for x0, x1 in zip(usage0[p], cpu_and_switches(p.proc.pid))] for p in (a, b)}
        a.stop()  # its last stats file: written at exit
        if logger == "pipe":
            time.sleep(2)  # the prototype's writer process drains after the proxy is gone
        writer_cpu1 = writer_thread_cpu_s(a)
        writer_cpu = (writer_cpu1 - writer_cpu0) if None not in (writer_cpu0, writer_cpu1) else None
        vis = [(seen[c] - t) * 1000 for c, t in received.items() if c in seen]
        return {"lat": lat, "wall": wall, "usage": (usage[a], usage[b]), "writer_cpu": writer_cpu, "vis": vis,
                "missing": sum(1 for c in received if c not in seen), "b_first": bool(r % 2)}
    finally:
        stop.set()
        for p in (a, b):
            try:
                if p.proc is not None and p.proc.poll() is None:
                    p.stop()
            except Exception:
                p.kill()


def main(n=int(sys.argv[1]) if len(sys.argv) > 1 else 400, clients=int(sys.argv[2]) if len(sys.argv) > 2 else 4,
         baseline=sys.argv[3] if len(sys.argv) > 3 else "none", logger=sys.argv[4] if len(sys.argv) > 4 else "pglog",
         rounds=int(sys.argv[5]) if len(sys.argv) > 5 else 4):
    if baseline not in ("none", "null") or logger not in ("pglog", "pipe", "null") or rounds < 1:
        raise SystemExit("usage: proxy_ab.py [calls per round] [clients] [none|null] [pglog|pipe|null] [rounds]")
    here = os.path.dirname(os.path.abspath(__file__))
    cluster = migrated_cluster()
    stub = Stub()
    tmp = tempfile.mkdtemp(prefix="pglog-ab-")
    load0 = [round(x, 2) for x in os.getloadavg()]
    try:
        results = [one_round(cluster, stub, tmp, r, n, clients, baseline, logger, here) for r in range(rounds)]
    finally:
        stub.stop()
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)
    lat_a = [x for res in results for x in res["lat"]["a"]]
    lat_b = [x for res in results for x in res["lat"]["b"]]
    per_round = [round(percentile(res["lat"]["a"], 50) - percentile(res["lat"]["b"], 50), 2) for res in results]
    # The figure judged: the mean of the per-round p50 differences, over rounds with both start orders,
    # so that what the order or the port does to one process cancels out.
    diff = sum(per_round) / len(per_round)
    pb = percentile(lat_b, 50)
    cpu_a = sum(res["usage"][0][0] for res in results)
    cpu_b = sum(res["usage"][1][0] for res in results)
    sw_a = sum(res["usage"][0][1] for res in results)
    sw_b = sum(res["usage"][1][1] for res in results)
    writer = [res["writer_cpu"] for res in results]
    vis = [v for res in results for v in res["vis"]]
    print(json.dumps({
        "bench": "proxy_ab", "logger": logger, "baseline": baseline, "rounds": rounds,
        "load_avg_start": load0, "load_avg_end": [round(x, 2) for x in os.getloadavg()],
        "calls_per_proxy": len(lat_a), "clients": clients,
        "req_per_s_total": round((len(lat_a) + len(lat_b)) / sum(res["wall"] for res in results), 1),
        "with_logger_p50_ms": round(percentile(lat_a, 50), 2), "without_logger_p50_ms": round(pb, 2),
        "p50_diff_ms_per_round": per_round, "b_started_first": [res["b_first"] for res in results],
        "p50_diff_ms": round(diff, 2), "p50_diff_pct": round(100 * diff / pb, 2),
        "target_p50_diff_ms": 1.0 if clients > 1 else 0.5,
        "with_logger_cpu_ms_per_call": round(1000 * cpu_a / len(lat_a), 3),
        "without_logger_cpu_ms_per_call": round(1000 * cpu_b / len(lat_b), 3),
        "cpu_diff_ms_per_call": round(1000 * (cpu_a / len(lat_a) - cpu_b / len(lat_b)), 3),
        "writer_thread_cpu_ms_per_call": round(1000 * sum(writer) / len(lat_a), 3) if None not in writer else None,
        "with_logger_switches_per_call": round(sw_a / len(lat_a), 2),
        "without_logger_switches_per_call": round(sw_b / len(lat_b), 2),
        "with_logger_p99_ms": round(percentile(lat_a, 99), 2),
        "without_logger_p99_ms": round(percentile(lat_b, 99), 2),
        "visible_p50_ms": round(percentile(vis, 50), 1) if vis else None,
        "visible_p99_ms": round(percentile(vis, 99), 1) if vis else None,
        "visible_max_ms": round(max(vis), 1) if vis else None, "target_visible_p99_ms": 1000,
        "not_visible": sum(res["missing"] for res in results) if logger != "null" else None,
    }))


if __name__ == "__main__":
    main()
