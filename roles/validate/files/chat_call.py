#!/usr/bin/env python3
"""Makes the validation run's chat calls and prints them as JSON (stdlib only).

Runs on the client host chosen by validate.yml (by default the first database
host, so the calls cross the network like a real client's). The gateway key
comes on stdin (first line) -- never on the command line or in the environment,
which Ansible shows at high verbosity -- and is never printed:
the recorded request shows `Authorization: Bearer <redacted>`.

    echo KEY | chat_call.py --url http://GW:4000 [--url ...] --model M --tag run:ID --calls K

Calls go round-robin over the URLs. Output: {"exchange": <first call in full:
request, status, latency_ms, usage, response_cost header, headers, body>,
"calls": [<one summary per call: url, status, latency_ms, call_id, tokens,
cost, t_end_epoch>]}. Exit status 0 even if calls fail: validate.yml judges.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

REDACTED = "Bearer <redacted>"


def one_call(url: str, key: str, body: dict, timeout: float) -> dict:
    data = json.dumps(body).encode()
    req = urllib.request.Request(
        url.rstrip("/") + "/v1/chat/completions", data=data, method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    t0_epoch = time.time()
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, headers, raw = resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, dict(err.headers or {}), err.read()
    except (urllib.error.URLError, OSError) as err:
        status, headers, raw = None, {}, json.dumps({"client_error": str(err)}).encode()
    latency_ms = (time.perf_counter() - t0) * 1000.0
    try:
        parsed = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        parsed = raw.decode("utf-8", "replace")
    lower = {k.lower(): v for k, v in headers.items()}
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    return {
        "request": {
            "method": "POST",
            "url": url.rstrip("/") + "/v1/chat/completions",
            "headers": {"Content-Type": "application/json", "Authorization": REDACTED},
            "body": body,
        },
        "status": status,
        "latency_ms": round(latency_ms, 1),
        "t_start_epoch": round(t0_epoch, 3),
        "t_end_epoch": round(t0_epoch + latency_ms / 1000.0, 3),
        "usage": usage,
        "call_id": lower.get("x-litellm-call-id"),
        "response_cost": lower.get("x-litellm-response-cost"),
        "headers": headers,
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
        calls.append(one_call(args.url[i % len(args.url)], key, body, args.timeout))
    out = {"exchange": calls[0] if calls else None, "calls": [summary(c) for c in calls]}
    print(json.dumps(out, indent=2, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
