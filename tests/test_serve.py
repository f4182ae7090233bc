"""Socket activation (litellm_pglog.serve): the proxy serves on the listening socket systemd
passes, and a restart refuses no call -- the calls made while no server runs wait in the
socket's backlog and are answered by the next server."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from litellm_pglog.serve import ActivationError, inherited_socket
from proxyrig import Proxy, Stub, http


def listening(kind: int = socket.SOCK_STREAM, listen: bool = True) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind(("127.0.0.1", 0))
    if listen:
        sock.listen(128)
    return sock


def passed(sock: socket.socket, **extra: str) -> tuple[dict[str, str], int]:
    """A copy of `sock`'s descriptor and the environment systemd would set for this process."""
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "litellm-gateway.socket", **extra}
    return env, os.dup(sock.fileno())


# --- the sd_listen_fds protocol -----------------------------------------------------------

def test_no_socket_when_listen_pid_is_another_process():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}
    assert inherited_socket(env, fd=999) is None
    assert env == {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1"}, "another process's variables were touched"
    assert inherited_socket({}, fd=999) is None


def test_takes_the_listening_tcp_socket_and_clears_the_variables():
    with listening() as sock:
        env, fd = passed(sock)
        got = inherited_socket(env, fd=fd)
        try:
            assert got.getsockname() == sock.getsockname()
            assert got.family == socket.AF_INET and got.type == socket.SOCK_STREAM
            assert env == {}, "LISTEN_* left for the workers to misread"
            assert not got.get_inheritable()
        finally:
            got.close()


@pytest.mark.parametrize("count", ["0", "2", ""])
def test_refuses_anything_but_one_socket(count):
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": count}
    with pytest.raises(ActivationError, match="exactly one socket"):
        inherited_socket(env, fd=999)
    assert env == {}


@pytest.mark.parametrize("kind, listen, message", [
    (socket.SOCK_STREAM, False, "not listening"),
    (socket.SOCK_DGRAM, False, "not a TCP socket"),
])
def test_refuses_a_socket_it_cannot_serve_on(kind, listen, message):
    with listening(kind, listen) as sock:
        env, fd = passed(sock)
        with pytest.raises(ActivationError, match=message):
            inherited_socket(env, fd=fd)


# --- the real proxy on a passed socket, restarted under calls -------------------------------

@pytest.fixture(scope="module")
def stub():
    s = Stub()
    yield s
    s.stop()


class Caller(threading.Thread):
    """Chat calls one after the other, each on a new connection, until stopped: status (0 for a
    connection error) and duration of each."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.results: list[tuple[int, float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        body = {"model": "gpt-stub", "messages": [{"role": "user", "content": "across a restart"}]}
        while not self.stop.is_set():
            t0 = time.monotonic()
            try:
                status, _, _ = http("POST", self.url + "/v1/chat/completions", body, self.key, timeout=60)
                err = ""
            except OSError as e:
                status, err = 0, repr(e)
            self.results.append((status, time.monotonic() - t0, err))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_restart_on_the_passed_socket_refuses_no_call(cluster, migrated, stub, tmp_path, workers):
    """One worker (uvicorn's Server.run) and two (its supervisor's bind_socket) take the passed
    socket; between SIGTERM to the first server and the second one answering, calls wait
    instead of failing."""
    env = {**cluster.env(), "PGLOG_STATS_INTERVAL_S": "1"}
    with listening() as sock:
        first = Proxy(str(tmp_path / "a"), stub.port, env, args=("--num_workers", workers))
        second = Proxy(str(tmp_path / "b"), stub.port, env, args=("--num_workers", workers))
        try:
            first.start(listen=sock)
            assert "serving on the socket passed by systemd" in first.tail(10**7), first.tail()
            caller = Caller(first.url, "sk-team-e2e-Yw2")
            caller.start()
            time.sleep(2)
            t_stop = time.monotonic()
            assert first.stop() == 0, first.tail()
            second.start(listen=sock)
            gap_s = time.monotonic() - t_stop
            time.sleep(2)
            caller.stop.set()
            caller.join(90)
        finally:
            first.kill()
            second.kill()
    statuses = [s for s, _, _ in caller.results]
    waited = [round(d, 1) for _, d, _ in caller.results if d > 2]
    print(f"serve: workers {workers}, {len(statuses)} calls, no server for {gap_s:.1f} s, "
          f"calls that waited: {waited}")
    assert statuses and set(statuses) == {200}, [r for r in caller.results if r[0] != 200][:5]
    assert waited, "no call was made while no server ran: the test proved nothing"
