#!/usr/bin/env python3
"""A bounded fuzz pass of the gateway's chat route with schemathesis (bed test, issue 11).

Runs on the control node with the audit venv's python (.venv-audit: schemathesis,
hypothesis, requests) against a bed gateway over HTTPS, the certificate verified against
--ca-file. The key (the master key: LiteLLM's OpenAPI document needs it) comes on stdin,
never on a command line.

    .venv-audit/bin/python fuzz.py --base https://GW:4000 --ca-file ca.crt \\
        --max-examples 150 --max-seconds 60 --model stub-small < key

Cases come from LiteLLM's own OpenAPI schema of POST /v1/chat/completions (its request
body schema), positive and negative; half of the dict bodies get a model the gateway
serves, so they reach the upstream and the logger's success path too. Bounded twice:
at most --max-examples cases, no new call after --max-seconds. Output: one JSON document:
{"calls", "seconds", "statuses": {status: n}, "call_ids": [...], "without_call_id": n,
 "server_errors": [{"status", "call_id", "body", "request"}], "client_errors": n}.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.request

from collections.abc import Mapping

ROUTE, METHOD = "/v1/chat/completions", "POST"
KEY_HEADER = "x-litellm-api-key"


def openapi(base: str, key: str, ca_file: str) -> dict:
    req = urllib.request.Request(base.rstrip("/") + "/openapi.json", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req, timeout=60, context=ssl.create_default_context(cafile=ca_file)) as resp:
        return json.load(resp)


def one_header(headers: Mapping, name: str) -> str | None:
    """The single value of a response header, whatever shape the client library gives:
    requests has one string per name, schemathesis 4 a list of strings per name. Two
    different values for one name are an error of the gateway, not a value to pick from."""
    values = [v for k, v in headers.items() if k.lower() == name.lower()]
    flat = [x for v in values for x in (v if isinstance(v, (list, tuple)) else [v])]
    distinct = sorted(set(flat))
    if len(distinct) > 1:
        raise ValueError(f"header {name} has {len(distinct)} different values: {distinct}")
    return distinct[0] if distinct else None


def main(argv: list[str]) -> int:
    # imported here, so that one_header can be tested without the audit venv
    import requests
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True)
    ap.add_argument("--ca-file", required=True)
    ap.add_argument("--max-examples", type=int, default=150)
    ap.add_argument("--max-seconds", type=float, default=60.0)
    ap.add_argument("--model", required=True)
    args = ap.parse_args(argv)
    key = sys.stdin.readline().strip()
    if not key:
        print("fuzz.py: the key must come on stdin", file=sys.stderr)
        return 2

    operation = schemathesis.openapi.from_dict(openapi(args.base, key, args.ca_file))[ROUTE][METHOD]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    session = requests.Session()
    session.verify = args.ca_file
    out: dict = {"calls": 0, "statuses": {}, "call_ids": [], "without_call_id": 0, "server_errors": [],
                 "client_errors": 0}
    t0 = time.monotonic()

    @settings(max_examples=args.max_examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(case=cases, served_model=st.booleans())
    def one(case, served_model: bool) -> None:
        if time.monotonic() - t0 > args.max_seconds:
            return
        if served_model and isinstance(case.body, dict):
            case.body["model"] = args.model
        out["calls"] += 1
        try:
            # The schema's security scheme is the x-litellm-api-key header (schemathesis fills it
            # with random text): the key goes there. verify= here too: schemathesis passes its
            # own (default: the system's CAs) per call.
            resp = case.call(base_url=args.base, session=session, headers={KEY_HEADER: key},
                             timeout=30, verify=args.ca_file)
        except (requests.RequestException, ValueError, TypeError, UnicodeError) as exc:
            out["client_errors"] += 1
            out.setdefault("client_error_kinds", {}).setdefault(exc.__class__.__name__, 0)
            out["client_error_kinds"][exc.__class__.__name__] += 1
            out.setdefault("client_error_example", str(exc)[:300])
            return
        status = str(resp.status_code)
        out["statuses"][status] = out["statuses"].get(status, 0) + 1
        try:
            call_id = one_header(resp.headers, "x-litellm-call-id")
        except ValueError as exc:
            out["server_errors"].append({"status": resp.status_code, "call_id": None, "body": str(exc),
                                         "request": json.dumps(case.body)[:500]})
            return
        if call_id:
            out["call_ids"].append(call_id)
        else:
            out["without_call_id"] += 1
            out.setdefault("without_call_id_statuses", []).append(resp.status_code)
        if resp.status_code >= 500:
            out["server_errors"].append({"status": resp.status_code, "call_id": call_id,
                                         "body": resp.text[:500], "request": json.dumps(case.body)[:500]})

    one()
    out["seconds"] = round(time.monotonic() - t0, 1)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
