"""The validation contract (roles/validate/files/contract.json) holds for what the parts
really write: the logging package's log lines parse with the contract's event format, and
the evidence writer renders every file the contract lists."""

from __future__ import annotations

import io
import json
import logging

import contract
import write_evidence
from litellm_pglog import events


def test_package_event_lines_match_the_contract():
    events.emit("startup")  # the package's own handler exists from here on; read what it formats
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(events.logger.handlers[0].formatter)
    events.logger.addHandler(handler)
    try:
        events.emit("connect", server_version="17.12", ssl={"version": "TLSv1.3"}, note="a } brace")
        events.emit("pool_stats", logging.INFO, pool={"reuse_rate": 0.99})
    finally:
        events.logger.removeHandler(handler)
    lines = [ln for ln in out.getvalue().splitlines() if "event=" in ln]
    parsed = [contract.parse_event(f"Dec 02 05:00:00 gateway litellm[42]: {ln}") for ln in lines]
    assert parsed == [("connect", {"note": "a } brace", "server_version": "17.12", "ssl": {"version": "TLSv1.3"}}),
                      ("pool_stats", {"pool": {"reuse_rate": 0.99}})]
    assert set(contract.EVIDENCE_EVENTS) == {"connect", "pool_stats"}


def test_lines_that_are_not_events_do_not_parse():
    for line in ("event=connect", "event=connect not-json", "event=Connect {}", "xevent=connect {}"):
        assert contract.parse_event(line) is None, line


def test_the_writer_renders_every_file_of_the_contract():
    files, config = write_evidence.render({"run_id": "x", "calls": 1, "units": {}})
    listed = set(contract.CARD_FILES + contract.JUDGED_FILES + contract.CONFIG_FILES) | {contract.MANIFEST}
    assert listed <= set(files) | set(config)
    assert len(contract.CARD_FILES) == 6
    assert json.loads(files[contract.MANIFEST])["expected_calls"] == 1


def test_secret_length_is_the_contracts():
    n = contract.SECRET_MIN_LENGTH
    assert not contract.is_secret("x" * (n - 1)) and contract.is_secret("x" * n)
    assert not contract.is_secret(None)
