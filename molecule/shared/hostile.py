#!/usr/bin/env python3
"""What a hostile caller sends, from a client host of the bed (issue 11's bed tests).

Standard library only: the tests copy it onto the db container (a client on the bed
network) and run it with `podman exec -i`; keys and the CA certificate come in the JSON
on stdin, never on a command line. Every call verifies the gateway's certificate. Output:
one JSON document on stdout.

  hostile.py dump                LiteLLM's own route table (run with the GATEWAY venv's python,
                                 script on stdin: `python - dump`), lazily attached routers
                                 registered: [{"path", "methods", "kind"}]
  hostile.py routes  < {...}     every (method, path) of a route list with each key:
                                 {"base", "ca", "keys": {label: key|null}, "routes": [...],
                                  "extra": [[method, path], ...]} ->
                                 {"answers": [[method, path, label, status, [internal headers]]],
                                  "websockets": [[path, label, status]]}
  hostile.py raw     < {...}     one request with a raw body or a declared length:
                                 {"base", "ca", "key", "path", "body": str, "headers": {},
                                  "declare_length": int|null} -> {"status", "head"}
  hostile.py hangup  < {...}     POST and hang up: after N server-sent events ("after_events")
                                 or after S seconds ("after_s") -> {"received": bytes, "status_line"}
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
import sys
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

# Headers that reveal internals (upstream URL, versions, deployment ids, spend, provider headers).
INTERNAL = ("x-litellm-model-api-base", "x-litellm-model-id", "x-litellm-model-name", "x-litellm-version",
            "x-litellm-response-cost-margin-amount", "x-litellm-response-cost-discount-amount",
            "x-litellm-key-spend")


def internal_headers(headers: list[tuple[str, str]]) -> list[str]:
    return sorted({k.lower() for k, _ in headers if k.lower() in INTERNAL or k.lower().startswith("llm_provider-")})


def concrete(path: str) -> str:
    """/openai/deployments/{model:path}/chat/completions -> /openai/deployments/p/q/chat/completions"""
    return re.sub(r"\{[^}:]+:path\}", "p/q", re.sub(r"\{[^}:]+\}", "x", path))


# ---------------------------------------------------------------- dump (gateway venv)

def dump() -> None:
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from fastapi.routing import _IncludedRouter  # noqa: PLC0415 (only in the gateway's venv)
    from litellm.proxy import proxy_server  # noqa: PLC0415
    from litellm.proxy._lazy_features import register_all_features  # noqa: PLC0415
    from starlette.routing import Mount  # noqa: PLC0415

    app = proxy_server.app
    register_all_features(app)
    out = []

    def walk(items):
        for r in items:
            if isinstance(r, _IncludedRouter):
                walk(r.effective_candidates())
                continue
            orig = getattr(r, "original_route", r)
            path = getattr(r, "path", None) or getattr(orig, "path", None)
            kind = ("mount" if isinstance(orig, Mount)
                    else "websocket" if "WebSocket" in type(orig).__name__ else "http")
            out.append({"path": path, "methods": sorted(getattr(orig, "methods", None) or []), "kind": kind})

    walk(app.routes)
    json.dump(out, sys.stdout)


# ---------------------------------------------------------------- client side

class Client:
    """One keep-alive HTTPS connection per thread (a TLS handshake per request would
    dominate a probe of a thousand routes)."""

    def __init__(self, base: str, ca: str) -> None:
        self.url = urllib.parse.urlsplit(base)
        self.ctx = ssl.create_default_context(cadata=ca) if ca else None
        self.local = threading.local()

    def _conn(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            if self.url.scheme == "https":
                conn = http.client.HTTPSConnection(self.url.hostname, self.url.port, timeout=30, context=self.ctx)
            else:
                conn = http.client.HTTPConnection(self.url.hostname, self.url.port, timeout=30)
            self.local.conn = conn
        return conn

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, list, bytes]:
        for attempt in (0, 1):
            conn = self._conn(fresh=attempt == 1)
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    self._conn(fresh=True)
                return resp.status, resp.getheaders(), data
            except (http.client.HTTPException, OSError):
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def raw_socket(self) -> socket.socket:
        sock = socket.create_connection((self.url.hostname, self.url.port), timeout=30)
        if self.url.scheme == "https":
            sock = self.ctx.wrap_socket(sock, server_hostname=self.url.hostname)
        return sock


def routes(req: dict) -> dict:
    client = Client(req["base"], req.get("ca", ""))
    targets, ws = [], []
    for r in req["routes"]:
        path = concrete(r["path"] or "/")
        if r["kind"] == "websocket":
            ws.append(path)
        elif r["kind"] == "mount":
            targets.append(("GET", path.rstrip("/") + "/"))
        else:
            targets += [(m, path) for m in r["methods"]]
    targets += [tuple(t) for t in req.get("extra", [])]
    jobs = [(m, p, label, key) for m, p in sorted(set(targets)) for label, key in req["keys"].items()]

    def probe(job):
        method, path, label, key = job
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = b"{}" if method in ("POST", "PUT", "PATCH") else None
        try:
            status, hdrs, _ = client.request(method, path, body, headers)
        except (http.client.HTTPException, OSError) as exc:
            return [method, path, label, f"error: {exc.__class__.__name__}", []]
        return [method, path, label, status, internal_headers(hdrs)]

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(probe, jobs))
    handshakes = []
    for path in ws:
        for label, key in req["keys"].items():
            sock = client.raw_socket()
            try:
                lines = [f"GET {path} HTTP/1.1", f"Host: {client.url.hostname}", "Upgrade: websocket",
                         "Connection: Upgrade", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                         "Sec-WebSocket-Version: 13"] + ([f"Authorization: Bearer {key}"] if key else [])
                sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
                handshakes.append([path, label, int(sock.recv(4096).split(b" ", 2)[1])])
            finally:
                sock.close()
    return {"answers": answers, "websockets": handshakes}


def raw(req: dict) -> dict:
    """One POST whose body is sent as given (bytes of a str, no JSON encoding on our side);
    with declare_length the head announces that many bytes and only the given body follows."""
    client = Client(req["base"], req.get("ca", ""))
    body = req.get("body", "").encode()
    sock = client.raw_socket()
    try:
        length = req.get("declare_length") or len(body)
        head = {"Host": client.url.hostname, "Content-Type": "application/json", "Content-Length": str(length),
                "Authorization": f"Bearer {req['key']}", **req.get("headers", {})}
        sock.sendall((f"POST {req['path']} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items())
                      + "\r\n").encode())
        try:
            sock.sendall(body)
        except OSError:
            pass  # the gateway answered (413) and closed before reading it all
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return {"status": status, "head": data.split(b"\r\n\r\n", 1)[0].decode("latin-1"),
            "body": data.split(b"\r\n\r\n", 1)[-1][:2000].decode("utf-8", "replace")}


def _length(data: bytes) -> int:
    m = re.search(rb"(?im)^content-length: *([0-9]+)", data.split(b"\r\n\r\n", 1)[0])
    return int(m.group(1)) if m else 0


def hangup(req: dict) -> dict:
    client = Client(req["base"], req.get("ca", ""))
    body = json.dumps(req["body"]).encode()
    sock = client.raw_socket()
    got = b""
    try:
        sock.sendall((f"POST {req['path']} HTTP/1.1\r\nHost: {client.url.hostname}\r\n"
                      f"Authorization: Bearer {req['key']}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        if req.get("after_events"):
            while got.count(b"data: ") < req["after_events"]:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                got += chunk
        else:
            sock.settimeout(req["after_s"])
            try:
                while chunk := sock.recv(65536):
                    got += chunk
            except (socket.timeout, ssl.SSLError):
                pass
    finally:
        sock.close()  # the hang-up
    return {"received": len(got), "status_line": got.split(b"\r\n", 1)[0].decode("latin-1") if got else ""}


def main(argv: list[str]) -> int:
    what = argv[0] if argv else ""
    if what == "dump":
        dump()
        return 0
    handlers = {"routes": routes, "raw": raw, "hangup": hangup}
    if what not in handlers:
        print(__doc__, file=sys.stderr)
        return 2
    json.dump(handlers[what](json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
