"""Starts the LiteLLM proxy on the listening socket systemd hands over (socket activation), so
that a restart refuses no call: the socket belongs to `litellm-gateway.socket`, which stays
open while the service restarts; connections made meanwhile wait in its backlog until the new
server accepts them, instead of being refused for the ~13 s LiteLLM takes to start.

    python -m litellm_pglog.serve --config … --host … --port … --num_workers N

takes exactly `litellm`'s arguments and runs LiteLLM's own command line (`proxy_cli.run_server`)
unchanged. Only where uvicorn gets its listening socket differs:

- one worker: uvicorn's `Server.run()` is given the inherited socket;
- several workers: uvicorn's supervisor asks `Config.bind_socket()` for the socket it hands to
  every worker; it gets the inherited one.

and how a server stops: it stops accepting, then gives the connections it has just accepted
`ACCEPTED_GRACE_S` to read their request before uvicorn's shutdown closes every connection
without one. Without that pause a call accepted in the same instant as SIGTERM was reset (seen
once in ~190 calls across a restart with two workers); with it the call is answered by the old
server, and every later one waits in the socket for the new server. The workers of a
multi-worker server are other processes (spawned): they import this module, and so get the
same shutdown, because the configuration they are sent is an `ActivatedConfig`.

uvicorn's own `--fd` would not do: it wraps the descriptor as AF_UNIX whatever it is, and
LiteLLM's command line does not pass it through. Without a socket from systemd (LISTEN_PID is
not this process) nothing is patched and the proxy binds --host/--port itself, as `litellm`
does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys

import uvicorn.config
import uvicorn.main  # noqa: F401  (the module; `uvicorn.main` the attribute is its click command)
import uvicorn.server

log = logging.getLogger("litellm_pglog.serve")

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
ACCEPTED_GRACE_S = 0.2
_passed: socket.socket | None = None  # the supervisor's copy; never pickled (class attributes are not)


class ActivationError(RuntimeError):
    """systemd passed something this server cannot listen on."""


def inherited_socket(environ: dict[str, str] | None = None, fd: int = SD_LISTEN_FDS_START) -> socket.socket | None:
    """The one listening TCP socket systemd passed to this process, or None when none was
    passed to it. The LISTEN_* variables are removed (as sd_listen_fds(1) does) so that the
    workers and any other child do not take the descriptor for theirs."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None  # not for us (unset, or meant for the process that exec'd us)
    count = env.get("LISTEN_FDS", "")
    for name in _LISTEN_VARS:
        env.pop(name, None)
    if count != "1":
        raise ActivationError(f"LISTEN_FDS={count!r}: the gateway listens on exactly one socket "
                              "(one ListenStream= in litellm-gateway.socket)")
    sock = socket.socket(fileno=fd)  # family and type read from the descriptor
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise ActivationError(f"the passed descriptor is {sock.family!r}/{sock.type!r}, not a TCP socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ActivationError("the passed TCP socket is not listening (Accept=no in the .socket unit)")
    sock.set_inheritable(False)  # the workers get it from uvicorn, not by inheritance
    return sock


class ActivatedConfig(uvicorn.config.Config):
    """uvicorn's configuration, bound to the socket systemd passed: the supervisor of several
    workers takes it from bind_socket(); each worker, unpickling this class, imports this
    module and so stops as described above."""

    def bind_socket(self) -> socket.socket:
        assert _passed is not None
        log.info("serving on the socket passed by systemd: %s", _passed.getsockname())
        return _passed


_serve_one = uvicorn.server.Server.run
_shutdown = uvicorn.server.Server.shutdown


def _run(self: uvicorn.server.Server, sockets: list[socket.socket] | None = None) -> None:
    if sockets is None and _passed is not None:  # one worker: uvicorn.run() calls server.run()
        log.info("serving on the socket passed by systemd: %s", _passed.getsockname())
        sockets = [_passed]
    return _serve_one(self, sockets=sockets)


async def _shutdown_after_accepted(self: uvicorn.server.Server, sockets: list[socket.socket] | None = None) -> None:
    for server in getattr(self, "servers", []):
        server.close()  # accept nothing more (idempotent: uvicorn's shutdown closes them again)
    await asyncio.sleep(ACCEPTED_GRACE_S)
    await _shutdown(self, sockets=sockets)


uvicorn.server.Server.shutdown = _shutdown_after_accepted  # type: ignore[method-assign]


def use_socket(sock: socket.socket) -> None:
    """Make uvicorn serve on `sock` instead of binding --host/--port."""
    global _passed
    _passed = sock
    # what uvicorn.run() builds; sys.modules, since the package's `main` attribute is the
    # command of the same name, not the module
    sys.modules["uvicorn.main"].Config = ActivatedConfig  # type: ignore[attr-defined]
    uvicorn.server.Server.run = _run  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        sock = inherited_socket()
    except ActivationError as err:
        sys.exit(f"litellm_pglog.serve: {err}")
    if sock is not None:
        use_socket(sock)
    from litellm.proxy.proxy_cli import run_server

    run_server.main(args=sys.argv[1:] if argv is None else argv, prog_name="litellm")


if __name__ == "__main__":
    main()
