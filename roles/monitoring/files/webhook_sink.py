#!/usr/bin/env python3
"""Lab webhook sink for Alertmanager (roles/monitoring; stdlib only).

    webhook_sink.py --host 127.0.0.1 --port 9097 --file notifications.jsonl [--max-bytes N]

Every POST body (Alertmanager's webhook payload: status, alerts with labels, startsAt,
endsAt) is appended to FILE as one JSON line {"received": <unix time>, "payload": {...}},
so the tests can read which alerts fired and resolved, and when. Beyond --max-bytes the
file keeps its newest half. GET / answers 200 (health). Nothing else is served.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20  # an Alertmanager notification is a few KB


class Sink:
    def __init__(self, path: str, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.lock = threading.Lock()

    def append(self, payload: object) -> None:
        line = json.dumps({"received": time.time(), "payload": payload}, separators=(",", ":")) + "\n"
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
            if os.path.getsize(self.path) > self.max_bytes:
                self._keep_newest_half()

    def _keep_newest_half(self) -> None:
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.readlines()
        tmp = self.path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(lines[len(lines) // 2:])
        os.replace(tmp, self.path)


def handler(sink: Sink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pglog-alert-sink"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(200, b"ok\n")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY:
                self._answer(413 if length > MAX_BODY else 400, b"bad length\n")
                return
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                self._answer(400, b"not JSON\n")
                return
            sink.append(payload)
            self._answer(200, b"stored\n")

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: object) -> None:  # one journal line per request
            print(f"{self.command} {self.path} {fmt % args}", flush=True)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9097)
    ap.add_argument("--file", required=True)
    ap.add_argument("--max-bytes", type=int, default=10 << 20)
    args = ap.parse_args()
    ThreadingHTTPServer((args.host, args.port), handler(Sink(args.file, args.max_bytes))).serve_forever()


if __name__ == "__main__":
    main()
