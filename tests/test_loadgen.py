"""The drills' load generator (molecule/shared/loadgen.py) spreading calls over several gateways:
round-robin, and with --failover a call that cannot connect goes to the next gateway. Real
sockets: a local HTTP server and a port nothing listens on."""

from __future__ import annotations

import io
import json
import socket
import sys
import threading
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "shared"))
import loadgen  # noqa: E402


class Answer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("x-litellm-call-id", f"id-{threading.get_ident()}-{id(self)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1/chat/completions"
    srv.shutdown()


@pytest.fixture
def closed_port_url():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connect is refused
    return f"http://127.0.0.1:{port}/v1/chat/completions"


def run(tmp_path, *args: str) -> dict:
    key = tmp_path / "key"
    key.write_text("sk-test")
    out = io.StringIO()
    with redirect_stdout(out):
        rc = loadgen.main(["--key-file", str(key), "--tag", "t1", "--rate", "50", "--count", "10",
                           "--duration", "10", "--timeout", "5", *args])
    assert rc == 0
    return json.loads(out.getvalue())


def test_failover_sends_a_call_that_cannot_connect_to_the_next_gateway(tmp_path, server, closed_port_url):
    doc = run(tmp_path, "--url", closed_port_url, "--url", server, "--failover")
    assert doc["summary"]["answered"] == 10, doc["summary"]
    # round-robin: the even calls were meant for the closed port, and went on
    moved = [c["i"] for c in doc["calls"] if c.get("failed_over")]
    assert moved == [0, 2, 4, 6, 8] and doc["summary"]["failed_over"] == 5


def test_without_failover_those_calls_fail_and_are_counted(tmp_path, server, closed_port_url):
    doc = run(tmp_path, "--url", closed_port_url, "--url", server)
    assert doc["summary"]["answered"] == 5 and doc["summary"]["statuses"]["0"] == 5, doc["summary"]
    assert all("ConnectionRefused" in c["error"] for c in doc["calls"] if c["status"] == 0)


@pytest.fixture
def unanswered_url():
    """A port whose SYNs go unanswered: a listener with a full backlog that never accepts
    (Linux drops the SYN), like a host that vanished from the network."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    fillers = []
    for _ in range(4):  # fill the accept queue (its length is backlog + 1)
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(lst.getsockname())
        fillers.append(c)
    yield f"http://127.0.0.1:{lst.getsockname()[1]}/v1/chat/completions"
    for c in fillers:
        c.close()
    lst.close()


def test_a_connect_that_hangs_fails_over_within_the_connect_timeout(tmp_path, server, unanswered_url):
    doc = run(tmp_path, "--url", unanswered_url, "--url", server, "--failover", "--connect-timeout", "0.5")
    assert doc["summary"]["answered"] == 10, doc["summary"]
    moved = [c for c in doc["calls"] if c.get("failed_over")]
    assert len(moved) == 5 and all("timeout" in c["failed_over"][0].lower() for c in moved), moved
    # bounded by the connect timeout, not the call's (5 s here)
    assert all(0.4 < c["end"] - c["start"] < 3 for c in moved), [c["end"] - c["start"] for c in moved]


@pytest.fixture
def late_server():
    """Accepts TCP at once (the kernel does) but reads and answers only after 1.5 s, like a
    gateway restarting behind its systemd socket."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(16)

    def serve() -> None:
        import time
        time.sleep(1.5)
        while True:
            try:
                conn, _ = lst.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nx-litellm-call-id: late\r\nContent-Length: 2\r\n\r\n{}")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{lst.getsockname()[1]}/v1/chat/completions"
    lst.close()


def test_a_gateway_that_accepts_but_answers_late_is_waited_for_not_failed_over(tmp_path, server, late_server):
    doc = run(tmp_path, "--url", late_server, "--url", server, "--failover", "--connect-timeout", "0.5")
    assert doc["summary"]["answered"] == 10 and doc["summary"]["failed_over"] == 0, doc["summary"]
    assert {c["host"] for c in doc["calls"]} == {"127.0.0.1"}
    slow = [c["end"] - c["start"] for c in doc["calls"] if c["i"] % 2 == 0]
    assert max(slow) > 1.0, slow  # they waited for the late answer
