"""What other callers see while one caller sends hostile bodies (issue 11, finding 6).

A: `litellm` with our callback (and so the request guard: body size / JSON depth / value count /
   non-finite numbers checked before LiteLLM parses anything); B: the same config without the callback
   (LiteLLM parses the bodies itself, as before the guard). For each proxy in turn: a quiet
   phase (C clients making normal chat calls), then an attack phase (the same clients plus one
   attacker looping over the hostile bodies). Prints JSON: the normal callers' latency in both
   phases, the attacker's statuses and latency, the load average (the machine is shared).

Usage: bench/hostile_bodies.py [seconds per phase] [clients]
"""

import collections
import json
import os
import shutil
import sys
import tempfile
import threading
import time

from _rig import migrated_cluster, percentile

from proxyrig import TEAM_KEY, Proxy, Stub, http  # noqa: E402


def hostile_bodies() -> dict[str, bytes]:
    def chat(extra: str) -> bytes:
        return ('{"model": "gpt-stub", "messages": [{"role": "user", "content": "hostile"}], "metadata": {"x": %s}}'
                % extra).encode()

    return {
        "array_5000_deep": chat("[" * 5000 + "]" * 5000),
        "object_900_deep": chat('{"a":' * 900 + "1" + "}" * 900),
        "flat_1MiB_brackets": chat("[" + "[]," * 330000 + "[]]"),
        "ints_1MiB": chat("[" + "1," * 500000 + "1]"),
        "escaped_quotes_900KiB": chat('"' + '\\"' * 300000 + '"'),
        "nan_parameter": b'{"model": "gpt-stub", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        "oversize_2MiB": chat('"' + "z" * (2 * 1024 * 1024) + '"'),
    }


def phase(proxy, seconds, clients, attack):
    stop = threading.Event()
    lat, att = [], collections.defaultdict(list)
    errors = collections.Counter()

    def client(k):
        i = 0
        while not stop.is_set():
            body = {"model": "gpt-stub", "messages": [{"role": "user", "content": f"normal {k} {i}"}]}
            t0 = time.perf_counter()
            status, _, _ = http("POST", proxy.url + "/v1/chat/completions", body, TEAM_KEY)
            lat.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors[status] += 1
            i += 1

    def attacker():
        bodies = list(hostile_bodies().items())
        i = 0
        while not stop.is_set():
            name, raw = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                status = http("POST", proxy.url + "/v1/chat/completions", raw=raw, key=TEAM_KEY, timeout=60)[0]
            except OSError as exc:  # a server may close while the 2 MiB body is still being sent
                status = f"closed:{exc.__class__.__name__}"
            att[name].append((status, round((time.perf_counter() - t0) * 1000, 1)))
            i += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    if attack:
        threads.append(threading.Thread(target=attacker))
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(90)
    out = {"calls": len(lat), "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
           "max_ms": round(max(lat), 1), "non_200": dict(errors)}
    if attack:
        out["attacker"] = {name: {"statuses": dict(collections.Counter(str(s) for s, _ in v)),
                                  "p50_ms": percentile([ms for _, ms in v], 50)} for name, v in att.items()}
    return out


def main(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else 10, clients=int(sys.argv[2]) if len(sys.argv) > 2 else 2):
    cluster = migrated_cluster()
    stub = Stub()
    tmp = tempfile.mkdtemp(prefix="pglog-hostile-")
    a = Proxy(os.path.join(tmp, "a"), stub.port, cluster.env())
    b = Proxy(os.path.join(tmp, "b"), stub.port, cluster.env())
    with open(b.config) as fh:
        cfg = fh.read()
    with open(b.config, "w") as fh:
        fh.write(cfg.replace("  callbacks: litellm_pglog.callback.proxy_handler_instance\n", ""))
    result = {"bench": "hostile_bodies", "seconds_per_phase": seconds, "clients": clients}
    try:
        for name, p in (("with_guard", a), ("without_guard", b)):
            p.start()
            for _ in range(10):  # warm-up: first calls are slow
                http("POST", p.url + "/v1/chat/completions",
                     {"model": "gpt-stub", "messages": [{"role": "user", "content": "warm"}]}, TEAM_KEY)
            result[name] = {"quiet": phase(p, seconds, clients, False), "attack": phase(p, seconds, clients, True),
                            "loadavg": [round(x, 2) for x in os.getloadavg()]}
            p.stop()
        print(json.dumps(result))
    finally:
        for p in (a, b):
            p.kill()
        stub.stop()
        cluster.destroy()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
