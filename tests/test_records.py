"""records.py: capture/prepare without a database."""

import hashlib
import json
import math
import os

from litellm_pglog import records


def slo(**over):
    base = {
        "id": "call-1", "startTime": 1000.0, "endTime": 1000.25, "model_group": "gpt-stub",
        "call_type": "acompletion", "stream": False, "end_user": "", "request_tags": ["run:x"],
        "messages": [{"role": "user", "content": "hi there"}], "model_parameters": {"temperature": 0},
        "status": "success", "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
        "response_cost": 0.00012, "response": {"choices": [{"message": {"content": "echo: hi there"}}]},
        "error_str": None, "error_information": None,
        "metadata": {"user_api_key_hash": hashlib.sha256(b"k").hexdigest()},
        "unrelated": "not captured",
    }
    base.update(over)
    return base


def test_capture_takes_only_known_fields_by_reference():
    s = slo()
    raw = records.capture(s)
    assert "unrelated" not in raw
    assert raw["messages"] is s["messages"]


def test_capture_gives_each_event_its_own_key_fixed_at_hand_off():
    s = slo()
    first, second = records.capture(s), records.capture(s)
    assert first["event_id"] != second["event_id"] and len(first["event_id"]) == 32
    assert first["event_time"] == second["event_time"] == 1000.0  # the request's start
    # preparing the same record twice (a replay) gives the same unique key
    a, b = records.prepare(first, 262144), records.prepare(dict(first), 262144)
    assert (a["created_at"], a["event_id"]) == (b["created_at"], b["event_id"]) == (1000.0, a["event_id"])
    assert records.prepare(second, 262144)["event_id"] != a["event_id"]
    # no start time from LiteLLM: the hand-off time, fixed in the record
    raw = records.capture(slo(startTime=None))
    assert raw["event_time"] > 1000.0 and records.prepare(raw, 262144)["created_at"] == raw["event_time"]


def test_overlong_or_unclean_identity_text_never_becomes_equal():
    base = "c" * 256
    ids = [base, base[:-1] + "d", base + "e", base + "f", "a\x00b", "a\\u0000b", "x\ud800", "x\ufffd",
           "ok" + records.IDENT_MARK + "0" * 64]
    stored = [records.ident(v, records.CALL_ID_LEN) for v in ids]
    assert len(set(stored)) == len(ids)
    assert all(len(v) <= records.CALL_ID_LEN for v in stored)
    assert stored[0] == base and stored[1] == base[:-1] + "d"  # up to 256 characters: verbatim
    assert stored[2].endswith(records.IDENT_MARK + hashlib.sha256(ids[2].encode()).hexdigest())
    assert stored[4] != "a\\u0000b" and stored[5] == "a\\u0000b"  # a NUL is not the literal escape
    for s in stored:
        s.encode("utf-8")  # PostgreSQL accepts every one
    # narrow columns too (call_type is VARCHAR(64)): cut values stay apart
    narrow = {records.ident("t" * 100 + str(i), 64) for i in range(50)}
    assert len(narrow) == 50 and all(len(v) == 64 for v in narrow)


def test_prepare_success_row():
    row = records.prepare(records.capture(slo()), 262144)
    assert row["call_id"] == "call-1" and row["model"] == "gpt-stub" and row["status"] == "success"
    assert row["latency_ms"] == 250.0
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (5, 3, 8)
    assert json.loads(row["tags"]) == ["run:x"]
    assert json.loads(row["payload"])["messages"][0]["content"] == "hi there"
    assert row["end_user"] is None
    assert row["api_key_hash"] == records.stored_key_hash("k")


def test_prepare_failure_body_holds_error():
    raw = records.capture(slo(status="failure", response=None, error_str="boom 500",
                              error_information={"error_code": "500", "error_class": "InternalServerError"}))
    row = records.prepare(raw, 262144)
    body = json.loads(row["body"])
    assert row["status"] == "failure"
    assert body["error"]["message"] == "boom 500" and body["error"]["error_code"] == "500"


def test_raw_key_is_hashed_never_stored():
    row = records.prepare(records.capture(slo(metadata={"user_api_key_hash": "sk-raw-secret"})), 262144)
    assert row["api_key_hash"] == records.key_hash("sk-raw-secret")
    assert "sk-raw-secret" not in json.dumps(row)


def test_key_hash_never_trusts_the_shape_of_a_value():
    """A wrong key shaped like a sha256 (openssl rand -hex 32) used to be stored as it was."""
    hex_key = os.urandom(32).hex()
    shapes = [hex_key, hex_key.upper(), "sk-" + hex_key, "h1:" + hex_key, records.key_hash("x"), "ünï", " "]
    for value in shapes:
        stored = records.key_hash(value)
        assert stored.startswith(records.KEY_HASH_PREFIX) and len(stored) == 67
        assert value not in stored or value == " " and stored.count(" ") == 0
        assert stored[3:] != hashlib.sha256(value.encode()).hexdigest()  # not LiteLLM's hash_token either
    assert len({records.key_hash(v) for v in shapes}) == len(shapes)
    row = records.prepare(records.capture(slo(metadata={"user_api_key_hash": hex_key})), 262144)
    assert hex_key not in json.dumps(row) and row["api_key_hash"] == records.key_hash(hex_key)
    assert records.key_hash("") == records.key_hash(None) == ""
    # what custom_auth hands LiteLLM, hashed again by the records: one definition for both
    assert records.stored_key_hash("sk-team") == records.key_hash(hashlib.sha256(b"sk-team").hexdigest())


def test_nul_is_escaped_not_dropped_in_json_and_text():
    raw = records.capture(slo(messages=[{"role": "user", "content": "a\x00b"}], model_group="m\x00x"))
    row = records.prepare(raw, 262144)
    assert "\\u0000" not in row["payload"].replace("\\\\u0000", "")  # no JSON NUL escape left
    assert json.loads(row["payload"])["messages"][0]["content"] == "a\\u0000b"
    assert row["model"].startswith("m\\u0000x" + records.IDENT_MARK)  # escaped, and marked as altered


def test_literal_backslash_u0000_text_is_left_alone():
    doc = records.jsonb({"c": "lit\\u0000eral"}, 1000)  # six literal characters, no NUL
    assert json.loads(doc) == {"c": "lit\\u0000eral"}


def test_odd_backslashes_before_nul():
    doc = records.jsonb({"c": "\\\x00"}, 1000)  # a backslash followed by a real NUL
    assert json.loads(doc) == {"c": "\\\\u0000"}


def test_lone_surrogate_becomes_replacement_char():
    doc = records.jsonb({"c": "x\ud800y"}, 1000)
    doc.encode("utf-8")
    assert json.loads(doc)["c"].startswith("x") and json.loads(doc)["c"].endswith("y")


def test_truncation_marker():
    big = "x" * 300_000
    doc = records.jsonb({"messages": [{"content": big}]}, 262144)
    marker = json.loads(doc)
    assert marker[records.TRUNCATION_MARKER] is True
    assert marker["original_bytes"] > 300_000
    assert len(doc.encode()) <= 262144 + 1024
    assert marker["head"].startswith('{"messages"')


def test_garbage_numbers_do_not_crash():
    row = records.prepare(records.capture(slo(prompt_tokens=None, response_cost="n/a", startTime=None)), 262144)
    assert row["prompt_tokens"] == 0 and row["cost_usd"] == 0.0
    assert not math.isnan(row["created_at"])


def test_non_finite_numbers_are_stored_as_strings_not_lost():
    """jsonb refuses NaN/Infinity; Python's json writes them bare (LiteLLM parses them from bodies)."""
    params = {"temperature": float("nan"), "top_p": float("inf"), "n": float("-inf"), "ok": 0.5,
              "nested": [{"x": float("nan")}], "tuple": (float("inf"),)}
    raw = records.capture(slo(model_parameters=params, response_cost=float("nan"), prompt_tokens=float("inf"),
                              startTime=float("nan")))
    row = records.prepare(raw, 262144)
    got = json.loads(row["payload"])["model_parameters"]
    assert got == {"temperature": "NaN", "top_p": "Infinity", "n": "-Infinity", "ok": 0.5,
                   "nested": [{"x": "NaN"}], "tuple": ["Infinity"]}
    assert "NaN" not in row["payload"].replace('"NaN"', "")  # no bare token left
    assert row["cost_usd"] == 0.0 and row["prompt_tokens"] == 0
    assert math.isfinite(row["created_at"]) and math.isfinite(row["latency_ms"])


def test_client_disconnects_get_their_own_status():
    litellm_499 = {"error_code": "499", "error_class": "ClientDisconnected",
                   "error_message": "Client disconnected the request"}
    cancelled = {"error_code": "499", "error_class": "HTTPException",
                 "error_message": "499: Client disconnected the request"}
    provider_499 = {"error_code": "499", "error_class": "APIError", "llm_provider": "openai",
                    "error_message": "litellm.APIError: client disconnected upstream said the provider"}
    # LiteLLM reports a stream cut short as a success carrying its 499
    row = records.prepare(records.capture(slo(stream=True, error_information=litellm_499,
                                              error_str="Client disconnected the request")), 262144)
    body = json.loads(row["body"])
    assert row["status"] == "client_disconnected" and body["error"]["error_code"] == "499"
    assert body["response"]["choices"][0]["message"]["content"] == "echo: hi there"  # what it assembled
    assert (row["prompt_tokens"], row["cost_usd"]) == (5, 0.00012)  # LiteLLM's numbers are kept
    # cancel_on_disconnect: a failure with the proxy's own 499
    row = records.prepare(records.capture(slo(status="failure", response=None, error_information=cancelled)), 262144)
    assert row["status"] == "client_disconnected"
    # a provider answering 499 is an ordinary failure
    row = records.prepare(records.capture(slo(status="failure", response=None, error_information=provider_499)), 262144)
    assert row["status"] == "failure"
    # LiteLLM saw nothing (non-streaming): the guard's delivery note decides
    raw = records.capture(slo())
    raw["delivery"] = {"client_disconnected": True, "disconnected_after_ms": 500.0, "response_complete": True}
    row = records.prepare(raw, 262144)
    body = json.loads(row["body"])
    assert row["status"] == "client_disconnected" and body["error"]["error_class"] == "ClientDisconnected"
    assert body["delivery"]["disconnected_after_ms"] == 500.0 and row["completion_tokens"] == 3
    raw["delivery"] = {"client_disconnected": False}
    assert records.prepare(raw, 262144)["status"] == "success"


def test_time_to_first_token_only_for_streams_that_got_a_chunk():
    base = dict(startTime=1000.0, endTime=1002.0, completionStartTime=1000.25)
    stream = records.prepare(records.capture(slo(stream=True, **base)), 262144)
    assert stream["ttft_ms"] == 250.0
    assert records.prepare(records.capture(slo(stream=False, **base)), 262144)["ttft_ms"] is None
    failed = records.prepare(records.capture(slo(stream=True, status="failure", **base)), 262144)
    assert failed["ttft_ms"] is None
    for odd in (None, float("nan"), 999.0, 1003.0, "x"):  # absent, non-finite, before start, after end
        row = records.prepare(records.capture(slo(stream=True, **dict(base, completionStartTime=odd))), 262144)
        assert row["ttft_ms"] is None, odd
