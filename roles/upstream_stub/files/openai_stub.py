#!/usr/bin/env python3
"""OpenAI-compatible upstream stub for tests and the lab (stdlib only).

POST /v1/chat/completions (also /chat/completions):
  prompt_tokens     = words in all message contents + 3 per message (computed from the input)
  completion_tokens = 1 + words in the last user message (the reply echoes them), capped by
                      max_tokens if given
  directives anywhere in the last user message:
    #stub:fail=CODE   answer with that HTTP status and an OpenAI-style error body
    #stub:sleep=MS    wait MS milliseconds before answering
    #stub:chunk_ms=MS when streaming, wait MS milliseconds before each content chunk
  "stream": true answers as server-sent events (chunks + final usage chunk + [DONE]).
GET /health -> {"status": "ok"}.  Anything else -> 404.

Usage: python3 openai_stub.py --host 127.0.0.1 --port 8090
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIRECTIVE = re.compile(r"#stub:(fail|sleep|chunk_ms)=(\d+)")
COMPLETION_PATHS = ("/v1/chat/completions", "/chat/completions")


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_words(s: str) -> int:
    return len(s.split())


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without this every small response waits for the delayed ACK (~40 ms per call).
    disable_nagle_algorithm = True
    server_version = "openai-stub/1"

    def log_message(self, fmt: str, *args: object) -> None:
        if self.server.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("stub: " + fmt % args + "\n")

    def _send(self, status: int, obj: object) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/health":
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if self.path.split("?")[0] not in COMPLETION_PATHS:
            self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
            return
        try:
            req = json.loads(raw)
            messages = req["messages"]
            assert isinstance(messages, list)
        except (ValueError, KeyError, AssertionError, TypeError):
            self._send(400, {"error": {"message": "body must be JSON with a messages list",
                                       "type": "invalid_request_error"}})
            return
        last_user = next((_text(m.get("content")) for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        for kind, value in DIRECTIVE.findall(last_user):
            if kind == "sleep":
                time.sleep(int(value) / 1000.0)
        for kind, value in DIRECTIVE.findall(last_user):
            if kind == "fail":
                self._send(int(value), {"error": {"message": f"stub failure {value}", "type": "server_error",
                                                  "code": str(value)}})
                return
        prompt_tokens = sum(count_words(_text(m.get("content"))) + 3 for m in messages if isinstance(m, dict))
        reply_words = ["echo:"] + last_user.split()
        if isinstance(req.get("max_tokens"), int) and req["max_tokens"] > 0:
            reply_words = reply_words[: req["max_tokens"]]
        reply = " ".join(reply_words)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(reply_words),
                 "total_tokens": prompt_tokens + len(reply_words)}
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        model = str(req.get("model") or "stub")
        if req.get("stream"):
            chunk_ms = max([int(v) for k, v in DIRECTIVE.findall(last_user) if k == "chunk_ms"] or [0])
            self._stream(cid, created, model, reply_words, usage, chunk_ms / 1000.0)
            return
        self._send(200, {
            "id": cid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        })

    def _stream(self, cid: str, created: int, model: str, words: list[str], usage: dict,
                chunk_delay: float = 0.0) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def chunk(delta: dict, finish: str | None = None, use: dict | None = None) -> None:
            obj = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [] if use else [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if use:
                obj["usage"] = use
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")

        chunk({"role": "assistant", "content": ""})
        for i, w in enumerate(words):
            if chunk_delay:
                self.wfile.flush()
                time.sleep(chunk_delay)
            chunk({"content": (" " if i else "") + w})
        chunk({}, "stop")
        chunk({}, None, usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.verbose = args.verbose  # type: ignore[attr-defined]
    print(f"openai-stub listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
