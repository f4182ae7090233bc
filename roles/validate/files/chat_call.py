#!/usr/bin/env python3
"""Makes the validation run's chat calls and prints them as JSON (stdlib only).

Runs on the client host chosen by validate.yml (by default the first database
host, so the calls cross the network like a real client's). stdin carries the
gateway key (first line) -- never the command line or the environment, which
Ansible shows at high verbosity -- and, after it, the PEM of the CA the gateway's
certificate must chain to (https URLs; without it the host's trust store is used).
The key is never printed: the recorded request shows `Authorization: Bearer <redacted>`.

    printf 'KEY\\n%s' "$(cat ca.crt)" | chat_call.py --url https://GW:4000 [--url ...] \\
        --model M --tag run:ID --calls K

Calls go round-robin over the URLs. Certificates are always verified (chain and
host name); there is no switch to turn that off. Output: {"exchange": <first
call in full: request, status, latency_ms, usage, response_cost header, tls,
headers, body>, "calls": [<one summary per call: url, status, latency_ms,
call_id, tokens, cost, tls_version, tls_cipher, cert_verified, t_end_epoch>]}.
Exit status 0 even if calls fail: validate.yml judges.
"""
from __future__ import annotations

import argparse
import http.client
import json
import ssl
import sys
import time
import urllib.parse

REDACTED = "Bearer <redacted>"


def tls_context(ca_pem: str) -> ssl.SSLContext:
    """Verifies the chain (against the given CA, else the system's) and the host name;
    TLS 1.2 is the floor (Python's default since 3.10, stated here)."""
    ctx = ssl.create_default_context(cadata=ca_pem) if ca_pem.strip() else ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def one_call(url: str, key: str, body: dict, timeout: float, ctx: ssl.SSLContext) -> dict:
    data = json.dumps(body).encode()
    target = url.rstrip("/") + "/v1/chat/completions"
    parts = urllib.parse.urlsplit(target)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    tls: dict = {"scheme": parts.scheme, "version": None, "cipher": None, "cert_verified": False}
    t0_epoch = time.time()
    t0 = time.perf_counter()
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        try:
            conn.request("POST", parts.path, body=data, headers=headers)
            resp = conn.getresponse()
            if isinstance(conn.sock, ssl.SSLSocket):
                # the handshake succeeded with CERT_REQUIRED and check_hostname: verified
                tls.update(version=conn.sock.version(), cipher=(conn.sock.cipher() or [None])[0],
                           cert_verified=ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname)
            status, headers_in, raw = resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as err:
        status, headers_in, raw = None, {}, json.dumps({"client_error": f"{err.__class__.__name__}: {err}"}).encode()
    latency_ms = (time.perf_counter() - t0) * 1000.0
    try:
        parsed = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    lower = {k.lower(): v for k, v in headers_in.items()}
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return {
        "request": {
            "method": "POST",
            "url": target,
            "headers": {"Content-Type": "application/json", "Authorization": REDACTED},
            "body": body,
        },
        "status": status,
        "latency_ms": round(latency_ms, 1),
        "t_start_epoch": round(t0_epoch, 3),
        "t_end_epoch": round(t0_epoch + latency_ms / 1000.0, 3),
        "tls": tls,
        "usage": usage,
        "call_id": lower.get("x-litellm-call-id"),
        "response_cost": lower.get("x-litellm-response-cost"),
        "headers": headers_in,
        "body": parsed,
    }


def summary(call: dict) -> dict:
    usage = call.get("usage") or {}
    return {
        "url": call["request"]["url"],
        "status": call["status"],
        "latency_ms": call["latency_ms"],
        "call_id": call["call_id"],
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "response_cost": call["response_cost"],
        "tls_version": call["tls"]["version"],
        "tls_cipher": call["tls"]["cipher"],
        "cert_verified": call["tls"]["cert_verified"],
        "t_end_epoch": call["t_end_epoch"],
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", action="append", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args(argv)
    key = sys.stdin.readline().strip()
    if not key:
        print("chat_call.py: the gateway key must come on stdin", file=sys.stderr)
        return 2
    try:
        ctx = tls_context(sys.stdin.read())
    except (ssl.SSLError, ValueError) as err:
        print(f"chat_call.py: the CA certificate on stdin is not usable: {err}", file=sys.stderr)
        return 2
    calls = []
    for i in range(args.calls):
        body = {
            "model": args.model,
            # Different text per call, so token counts differ between calls.
            "messages": [{"role": "user",
                          "content": f"Validation {args.tag}, call {i + 1} of {args.calls}: "
                                     + "please answer briefly. " * (i + 1)}],
            "metadata": {"tags": [args.tag]},
        }
        calls.append(one_call(args.url[i % len(args.url)], key, body, args.timeout, ctx))
    out = {"exchange": calls[0] if calls else None, "calls": [summary(c) for c in calls]}
    print(json.dumps(out, indent=2, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
