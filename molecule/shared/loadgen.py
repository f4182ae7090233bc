#!/usr/bin/env python3
"""Bounded load generator for the resilience drills (molecule/resilience).

Standard library only: it is copied onto the bed's db container and calls the gateway over
the bed network, as a client would. Bounded twice: it stops after --count calls or after
--duration seconds, whichever comes first, and every call has a --timeout.

Calls are paced at --rate per second (a thread pool, so a slow answer does not slow the
pace). Each call carries the run tag (`metadata.tags: ["run:<tag>"]`) and a unique prompt.
--mix cycles through kinds of call; besides `ok` there are deliberately bad ones (drill 7):

  ok             a normal chat completion                      -> 200
  big            ok with a prompt of --big-bytes (900 KiB)      -> 200
  oversize       a body over the gateway's limit (2 MiB)        -> 413
  nul            ok with NUL characters in the prompt           -> 200
  malformed      body that is not JSON                          -> 400
  nokey          no Authorization header                        -> 401
  wrongkey       a wrong key                                    -> 401
  unknown_model  a model the gateway does not serve             -> 400

Several --url: calls go round-robin over them, as a load balancer in front of several gateways
would send them. With --failover, a call whose connection cannot be opened (refused, no route,
connect timeout: the request never left this host, so nothing can be doubled) is sent to the
next URL instead, once per URL; such a call records `failed_over`. The TCP connect has a
bound of its own, --connect-timeout (2 s), as a load balancer's: a host that vanished answers
no SYN, and waiting the whole --timeout for it would tie up the pool's threads until calls to
the healthy gateway queue behind them. The TLS handshake is bounded by --timeout: a gateway
restarting behind its systemd socket accepts the connection at once and answers the
handshake only when the server is up (~12 s); that call waits, as a caller would.

https URLs are called with the certificate verified (chain and host name) against
--ca-file (else the system's trust store); there is no switch to skip verification.

Output on stdout: ONE JSON document {"summary": {...}, "calls": [...]}; each call has its
index, kind, HTTP status (0 = no answer), the x-litellm-call-id header, start and end
(epoch seconds) and an error text for calls without an answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

KINDS = ("ok", "big", "oversize", "nul", "malformed", "nokey", "wrongkey", "unknown_model")


def build(kind: str, i: int, args: argparse.Namespace, key: str) -> tuple[bytes, dict[str, str]]:
    prompt = f"drill {args.tag} call {i}: say something short."
    if args.prompt_bytes > len(prompt):
        prompt += " " + "x" * (args.prompt_bytes - len(prompt) - 1)
    model = args.model
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if kind == "big":
        prompt += " " + "y" * args.big_bytes
    elif kind == "oversize":
        prompt += " " + "z" * (2 * 1024 * 1024)
    elif kind == "nul":
        prompt += " with NUL \u0000 inside \u0000."
    elif kind == "nokey":
        del headers["Authorization"]
    elif kind == "wrongkey":
        headers["Authorization"] = "Bearer sk-drill-wrong-key-" + "0" * 24
    elif kind == "unknown_model":
        model = "no-such-model-drill"
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "metadata": {"tags": [f"run:{args.tag}"]},
    }
    data = json.dumps(body).encode()
    if kind == "malformed":
        data = b'{"model": "' + model.encode() + b'", "messages": [ {"role": "user", "content": "unterminated'
    return data, headers


def connect(url: urllib.parse.SplitResult, args: argparse.Namespace, ctx: ssl.SSLContext | None) -> http.client.HTTPConnection:
    """TCP connect within --connect-timeout, then everything else (TLS handshake included)
    within --timeout."""
    https = url.scheme == "https"
    port = url.port or (443 if https else 80)
    sock = socket.create_connection((url.hostname, port), timeout=args.connect_timeout)
    sock.settimeout(args.timeout)
    try:
        if https:
            sock = (ctx or ssl.create_default_context()).wrap_socket(sock, server_hostname=url.hostname)
    except BaseException:
        sock.close()
        raise
    conn = http.client.HTTPConnection(url.hostname, port, timeout=args.timeout)
    conn.sock = sock  # already connected: http.client sends on it as it is
    return conn


def open_connection(urls: list[urllib.parse.SplitResult], first: int, args: argparse.Namespace,
                    ctx: ssl.SSLContext | None, rec: dict) -> tuple[http.client.HTTPConnection, urllib.parse.SplitResult]:
    """A connected connection to urls[first], else (failover) to the next ones in turn. Only
    the connect (TCP, then TLS) is retried: no byte of the request has been sent yet."""
    tries = len(urls) if args.failover else 1
    for k in range(tries):
        url = urls[(first + k) % len(urls)]
        try:
            return connect(url, args, ctx), url
        except OSError as exc:
            if k == tries - 1:
                raise
            rec.setdefault("failed_over", []).append(f"{url.hostname}: {exc.__class__.__name__}")
    raise AssertionError("unreachable")


def call(i: int, kind: str, args: argparse.Namespace, key: str, urls: list[urllib.parse.SplitResult],
         ctx: ssl.SSLContext | None = None) -> dict:
    data, headers = build(kind, i, args, key)
    rec = {"i": i, "kind": kind, "status": 0, "call_id": None, "start": time.time(), "end": None}
    conn = None
    try:
        conn, url = open_connection(urls, i % len(urls), args, ctx, rec)
        rec["host"] = url.hostname
        conn.request("POST", url.path or "/", body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        rec["status"] = resp.status
        rec["call_id"] = resp.getheader("x-litellm-call-id")
        if resp.status != 200:
            rec["error"] = payload[:200].decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as exc:
        rec["error"] = f"{exc.__class__.__name__}: {exc}"[:200]
    finally:
        if conn is not None:
            conn.close()
        rec["end"] = time.time()
    return rec


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, action="append",
                   help="https://<gateway>:4000/v1/chat/completions (repeat: round-robin over several)")
    p.add_argument("--failover", action="store_true",
                   help="a call that cannot connect goes to the next --url (the request was never sent)")
    p.add_argument("--key-file", required=True, help="file holding the gateway key (sk-...)")
    p.add_argument("--ca-file", help="CA certificate the gateway's certificate chains to (https)")
    p.add_argument("--model", default="stub-small")
    p.add_argument("--tag", required=True, help="run id; sent as metadata tag run:<tag>")
    p.add_argument("--rate", type=float, default=5.0, help="calls per second")
    p.add_argument("--duration", type=float, default=30.0, help="stop after this many seconds")
    p.add_argument("--count", type=int, default=1000, help="stop after this many calls")
    p.add_argument("--timeout", type=float, default=30.0, help="per call, seconds")
    p.add_argument("--connect-timeout", type=float, default=2.0, help="TCP + TLS connect, seconds")
    p.add_argument("--mix", default="ok", help="comma-separated kinds, cycled: " + ",".join(KINDS))
    p.add_argument("--prompt-bytes", type=int, default=0, help="pad every prompt to this size")
    # under the gateway's body limit (litellm_gateway_max_body_bytes, 1 MiB) with the JSON around it
    p.add_argument("--big-bytes", type=int, default=900 * 1024)
    p.add_argument("--stop-file", help="stop early once this file exists (checked before each call)")
    args = p.parse_args(argv)
    kinds = [k.strip() for k in args.mix.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds or args.rate <= 0 or args.count < 1 or args.duration <= 0:
        p.error(f"bad --mix/--rate/--count/--duration (unknown kinds: {bad})")
    with open(args.key_file, encoding="utf-8") as fh:
        key = fh.read().strip()
    urls = [urllib.parse.urlsplit(u) for u in args.url]
    ctx = ssl.create_default_context(cafile=args.ca_file) if any(u.scheme == "https" for u in urls) else None

    results: list[dict] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        rec = call(i, kinds[i % len(kinds)], args, key, urls, ctx)
        with lock:
            results.append(rec)

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=32) as pool:
        i = 0
        while i < args.count and time.time() - t0 < args.duration:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            pool.submit(run, i)
            i += 1
            delay = t0 + i / args.rate - time.time()
            if delay > 0:
                time.sleep(delay)
    results.sort(key=lambda r: r["i"])
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    summary = {"tag": args.tag, "sent": len(results), "statuses": statuses,
               "answered": statuses.get("200", 0), "failed_over": sum(1 for r in results if r.get("failed_over")),
               "seconds": round(time.time() - t0, 1)}
    json.dump({"summary": summary, "calls": results}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
