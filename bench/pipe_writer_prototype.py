"""MEASUREMENT PROTOTYPE, not a product: the writer in its own process, fed over a pipe.

Question it answers (bench/proxy_ab.py 400 4 null pipe): does moving the writer out of the
proxy's interpreter take its cost off the event loop at saturation, beyond what the in-process
writer (one thread, few wake-ups) already does? On the loop each call then costs a capture,
one orjson.dumps and one non-blocking write(2) -- no thread of ours in the proxy at all.

What it does NOT have (and a real version would need, for the package's no-loss guarantees):
acknowledgements from the child and re-sending after a child crash, restarting the child,
a parent-side bounded buffer flushed by the loop when the pipe is full (here: a list, never
flushed), the SIGTERM drain ordering (here: EOF on exit), counters in the parent.

Parent: `callbacks: pipe_writer_prototype.instance`. Child: this file with --child; it runs the
normal in-process Writer on NDJSON records from stdin until EOF.
"""

import fcntl
import os
import subprocess
import sys

F_SETPIPE_SZ = 1031  # linux/fcntl.h


def child() -> None:
    import orjson

    from litellm_pglog.config import Settings
    from litellm_pglog.writer import Writer

    writer = Writer(Settings.from_env())
    writer.start()
    for line in sys.stdin.buffer:
        writer.submit(orjson.loads(line))
    writer.stop()


def _callback_class():
    import orjson
    from litellm.integrations.custom_logger import CustomLogger

    from litellm_pglog.records import capture

    class PipeCallback(CustomLogger):
        def __init__(self) -> None:
            super().__init__()
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"], stdin=subprocess.PIPE)
            self.fd = self.proc.stdin.fileno()
            os.set_blocking(self.fd, False)
            try:
                fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            self.unsent: list[bytes] = []

        def _send(self, kwargs) -> None:  # noqa: ANN001
            raw = capture(kwargs["standard_logging_object"])
            raw["id"] = kwargs.get("litellm_call_id") or raw.get("id")
            data = orjson.dumps(raw, default=str, option=orjson.OPT_NON_STR_KEYS) + b"\n"
            try:
                os.write(self.fd, data)
            except BlockingIOError:
                self.unsent.append(data)

        async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
            self._send(kwargs)

        async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
            self._send(kwargs)

    return PipeCallback


_instance = None


def __getattr__(name: str):
    global _instance
    if name == "instance":
        if _instance is None:
            _instance = _callback_class()()
        return _instance
    raise AttributeError(name)


if __name__ == "__main__" and "--child" in sys.argv:
    child()
