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

uvicorn's own `--fd` would not do: it wraps the descriptor as AF_UNIX whatever it is, and
LiteLLM's command line does not pass it through. Without a socket from systemd (LISTEN_PID is
not this process) nothing is patched and the proxy binds --host/--port itself, as `litellm`
does.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger("litellm_pglog.serve")

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed descriptor
_LISTEN_VARS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


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


def use_socket(sock: socket.socket) -> None:
    """Make uvicorn serve on `sock` instead of binding --host/--port."""
    import uvicorn.config
    import uvicorn.server

    where = sock.getsockname()

    def bind_socket(self: uvicorn.config.Config) -> socket.socket:
        log.info("serving on the socket passed by systemd: %s", where)
        return sock

    serve_one = uvicorn.server.Server.run

    def run(self: uvicorn.server.Server, sockets: list[socket.socket] | None = None) -> None:
        if sockets is None:  # one worker: uvicorn.run() calls server.run() without sockets
            log.info("serving on the socket passed by systemd: %s", where)
            sockets = [sock]
        return serve_one(self, sockets=sockets)

    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]
    uvicorn.server.Server.run = run  # type: ignore[method-assign]


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
