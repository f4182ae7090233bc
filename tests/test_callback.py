"""The CustomLogger: hand-off only, lazy instance, call id choice."""

import asyncio
import importlib

from helpers import make_slo
from litellm_pglog import callback as cbmod
from litellm_pglog.callback import PglogCallback


class FakeWriter:
    def __init__(self):
        self.got = []

    def submit(self, raw):
        self.got.append(raw)


def test_hooks_hand_off_with_litellm_call_id():
    w = FakeWriter()
    cb = PglogCallback(writer=w)
    slo = make_slo(1, call_id="chatcmpl-provider-id")
    asyncio.run(cb.async_log_success_event({"standard_logging_object": slo, "litellm_call_id": "uuid-1"}, None, 0, 0))
    asyncio.run(cb.async_log_failure_event({"standard_logging_object": make_slo(2, status="failure")}, None, 0, 0))
    assert [r["id"] for r in w.got][0] == "uuid-1"
    assert w.got[1]["status"] == "failure" and w.got[1]["id"].startswith("call-")


def test_missing_slo_is_counted_not_raised():
    cb = PglogCallback(writer=FakeWriter())
    asyncio.run(cb.async_log_success_event({"litellm_call_id": "x"}, None, 0, 0))
    assert cb.missing_slo == 1


def test_import_starts_nothing():
    mod = importlib.reload(cbmod)
    assert mod._instance is None


def test_config_error_refuses_to_start(monkeypatch):
    for k in ("PGLOG_DB_HOST", "PGLOG_DB_NAME", "PGLOG_DB_USER"):
        monkeypatch.delenv(k, raising=False)
    import pytest

    from litellm_pglog.config import ConfigError

    with pytest.raises(ConfigError, match="PGLOG_DB_HOST"):
        PglogCallback()


def test_the_guards_delivery_note_travels_with_the_record():
    from litellm_pglog.guard import DELIVERY, Delivery

    w = FakeWriter()
    cb = PglogCallback(writer=w)
    note = Delivery()
    token = DELIVERY.set(note)
    try:
        asyncio.run(cb.async_log_success_event({"standard_logging_object": make_slo(1), "litellm_call_id": "c"},
                                               None, 0, 0))
    finally:
        DELIVERY.reset(token)
    asyncio.run(cb.async_log_success_event({"standard_logging_object": make_slo(2)}, None, 0, 0))
    assert w.got[0]["delivery"] is note  # a reference: the guard may still learn of a hang-up
    assert w.got[1]["delivery"] is None
