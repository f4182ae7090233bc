"""The LiteLLM callback. config.yaml: `litellm_settings: callbacks: litellm_pglog.callback.proxy_handler_instance`.

`proxy_handler_instance` is created on first access (PEP 562 module __getattr__), i.e. when
LiteLLM loads its config -- importing this module (tests, the CLI) starts nothing. Creating it
reads PGLOG_* from the environment, checks the database revision and starts the writer thread;
a configuration error or a schema mismatch raises, so the proxy refuses to start with an
`event=startup_refused` line instead of running without its log.

Creating it also installs the request guard (guard.py) in front of LiteLLM's app.

On the event loop the hooks only copy references out of `standard_logging_object` and put them
on a SimpleQueue (no serialisation, no I/O): see bench/callback_overhead.py.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
from typing import Any

from litellm.integrations.custom_logger import CustomLogger

from .config import ConfigError, Settings
from .events import emit
from .guard import DELIVERY
from .guard import install as install_guard
from .metrics import Endpoint
from .records import capture
from .writer import Writer


class PglogCallback(CustomLogger):
    def __init__(self, writer: Writer | None = None, settings: Settings | None = None) -> None:
        super().__init__()
        if writer is None:
            try:
                settings = settings or Settings.from_env()
            except ConfigError as exc:
                emit("startup_refused", logging.ERROR, reason=str(exc))
                raise
            writer = Writer(settings)
            writer.start()
            if settings.metrics_port:
                # its own port on the gateway's internal address, not one of LiteLLM's routes
                Endpoint(writer.metrics, settings.metrics_host, settings.metrics_port).start()
        self.writer = writer
        self.missing_slo = 0

    def _submit(self, kwargs: dict[str, Any]) -> None:
        slo = kwargs.get("standard_logging_object")
        if not slo:
            self.missing_slo += 1
            emit("missing_standard_logging_object", logging.WARNING, call_id=kwargs.get("litellm_call_id"))
            return
        raw = capture(slo)  # gives the event its own id and time: the row's unique key
        # The call id stored (and searchable, not unique) is LiteLLM's (= the x-litellm-call-id
        # response header, which a caller may choose). slo["id"] is not: in 1.108.7 it is the
        # provider's response id when there is one.
        raw["id"] = kwargs.get("litellm_call_id") or slo.get("id")
        # what the guard saw of the answer (a reference: read when the writer prepares the row)
        raw["delivery"] = DELIVERY.get()
        self.writer.submit(raw)

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
        self._submit(kwargs)

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):  # noqa: ANN001
        self._submit(kwargs)

    def shutdown(self) -> None:
        """atexit: first let LiteLLM run the logging tasks it still holds (they end up in our
        queue), then drain our queue to the database or the spool."""
        try:
            from litellm.litellm_core_utils.logging_worker import GLOBAL_LOGGING_WORKER

            GLOBAL_LOGGING_WORKER._flush_on_exit()  # idempotent: it empties LiteLLM's queue
        except Exception as exc:  # private API of LiteLLM: never let it stop our drain
            emit("litellm_flush_failed", logging.WARNING, error=str(exc)[:200])
        self.writer.stop()


_instance: PglogCallback | None = None
_lock = threading.Lock()


def get_instance() -> PglogCallback:
    global _instance
    with _lock:
        if _instance is None:
            _instance = PglogCallback()
            # atexit runs after uvicorn's graceful shutdown (SIGTERM) returns from uvicorn.run,
            # while our daemon writer thread is still alive.
            atexit.register(_instance.shutdown)
            _take_over_uvicorn_signals()
            # In front of LiteLLM's app, in this worker (LiteLLM has no middleware setting; its
            # config load, which asks for us, runs in every worker's startup).
            try:
                install_guard()
            except ConfigError as exc:  # PGLOG_MAX_BODY_BYTES / PGLOG_MAX_JSON_DEPTH malformed
                emit("startup_refused", logging.ERROR, reason=str(exc))
                raise
        return _instance


def _take_over_uvicorn_signals() -> None:
    """Make SIGTERM end the process through atexit, where the drain runs.

    uvicorn (0.54, as used by `litellm`) catches SIGTERM, shuts the app down gracefully, then
    restores the default handler and re-raises the signal: the process dies without running
    atexit, so nothing queued could be drained. We are created during the app's startup, when
    uvicorn's handler is installed; we wrap it: the first signal sets the server's public
    `should_exit` flag (the same graceful shutdown, minus the re-raise), so uvicorn.run returns
    and the interpreter exits normally (status 0) through atexit; a second signal goes to
    uvicorn's own handler (its force-exit). Outside uvicorn nothing is changed.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(sig)
        except ValueError:
            return
        server = getattr(previous, "__self__", None)
        if server is None or not hasattr(server, "should_exit") or not callable(previous):
            continue

        def handler(signum: int, frame: Any, previous: Any = previous, server: Any = server) -> None:
            if server.should_exit:
                previous(signum, frame)
                return
            emit("shutdown_requested", signal=signal.Signals(signum).name)
            server.should_exit = True

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave uvicorn's handler alone
            emit("signal_hook_skipped", logging.WARNING, reason="not in the main thread")
            return


def __getattr__(name: str) -> Any:
    if name == "proxy_handler_instance":
        return get_instance()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
