"""The payload capture policy (privacy.py, issue 14 item 6): what it masks, what it keeps, and
that under `redacted` no seeded secret reaches the database, the spool, the rejected file or a
dump of the database, while under `full` the same search finds them (so the search can fail)."""

from __future__ import annotations

import glob
import json
import os
import subprocess

import pytest

from conftest import query
from helpers import make_slo
from litellm_pglog import privacy, records
from litellm_pglog.config import ConfigError, Settings
from litellm_pglog.writer import Writer
from pgcluster import DB, wait_until

# Values of each kind a caller might paste into a prompt (all fake; the card passes Luhn).
SEEDED = {
    "email": "jane.doe+billing@example-corp.co.uk",
    "api_key": "sk-proj-Q3ZpA7xK2mN9vB4cR8tY1uI6oP0lLk",
    "aws_access_key": "AKIAQ3ZPA7XK2MN9VB4C",
    "google_api_key": "AIzaSyQ3ZpA7xK2mN9vB4cR8tY1uI6oP0lLkJhG",
    "github_token": "ghp_Q3ZpA7xK2mN9vB4cR8tY1uI6oP0lLkJhGfDs",
    "slack_token": "xoxb-123456789012-abcdefghijkl",
    "bearer_token": "Bearer Q3ZpA7xK2mN9vB4cR8tY1uI6",
    "card_number": "4111-1111-1111-1111",
}
# what a search for each seeded value looks for (the card also without its dashes)
NEEDLES = [v.split(" ", 1)[-1] for v in SEEDED.values()] + ["4111111111111111"]


def redacted() -> privacy.Policy:
    return privacy.Policy("redacted", privacy.load_patterns(None))


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_each_default_pattern_masks_its_kind(name):
    out = redacted().mask(f"before {SEEDED[name]} after")
    assert out == f"before [REDACTED:{name}] after"


def test_patterns_keep_their_own_flags_and_groups():
    pol = privacy.Policy("redacted", privacy.compile_patterns([
        {"name": "shout", "regex": "(?i)secret"}, {"name": "word", "regex": "(P)lain"},
        {"name": "twice", "regex": r"(\w)\1{3}", "requires": ["zzzz", "yyyy"]}]))
    assert pol.mask("SECRET secret plain Plain zzzz xxxx") == \
        "[REDACTED:shout] [REDACTED:shout] plain [REDACTED:word] [REDACTED:twice] [REDACTED:twice]"
    assert pol.mask("xxxx") == "xxxx"  # none of its `requires` literals: the pattern is not tried


def test_built_in_patterns_respect_word_boundaries():
    pol = redacted()
    for text in ("task" + "-abcdefghijklmnopqrstuvwxyz",  # split: no key-shaped literal in the repo "XAKIAQ3ZPA7XK2MN9VB4C", "9" + "4111111111111111",
                 "unbearer abcdefghijklmnopqrstu", "nxoxb-123456789012-abcdefghijkl"):
        assert pol.mask(text) == text, text


def test_numbers_that_fail_luhn_and_plain_text_are_kept():
    pol = redacted()
    for text in ("order 1234567890123 shipped", "ts 1733131200000 ms", "plain words, no secrets", "sk-short"):
        assert pol.mask(text) == text


def test_redacted_payload_keeps_structure_and_masks_keys_and_values():
    pol = redacted()
    got = pol.payload([{"role": "user", "content": f"mail {SEEDED['email']}"}],
                      {"temperature": 0.2, "user": SEEDED["email"], SEEDED["email"]: 1})
    assert got == {"messages": [{"role": "user", "content": "mail [REDACTED:email]"}],
                   "model_parameters": {"temperature": 0.2, "user": "[REDACTED:email]", "[REDACTED:email]": 1}}


def test_metadata_keeps_no_message_text():
    pol = privacy.Policy("metadata", privacy.load_patterns(None))
    payload = pol.payload([{"role": "system", "content": "be brief"}, {"role": "user", "content": "secret plan"}],
                          {"temperature": 0.2, "tools": [{"name": "leak", "description": "secret plan"}]})
    assert payload == {"messages": [{"role": "system", "chars": 8}, {"role": "user", "chars": 11}],
                       "model_parameters": {"temperature": 0.2}, "capture": "metadata"}
    body = pol.body({"id": "c1", "model": "m", "usage": {"total_tokens": 3},
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "secret plan"}}]})
    assert body == {"capture": "metadata", "id": "c1", "model": "m", "usage": {"total_tokens": 3},
                    "choices": [{"index": 0, "finish_reason": "stop"}]}
    assert "secret" not in json.dumps(pol.body({"error": {"error_code": "500", "message": "secret plan"}}))


def test_full_is_the_default_and_keeps_everything():
    s = make_slo(1, content=SEEDED["email"])
    row = records.prepare(records.capture(s), 262_144)
    assert SEEDED["email"] in row["payload"]
    assert Settings.from_env({"PGLOG_DB_HOST": "h", "PGLOG_DB_NAME": "d", "PGLOG_DB_USER": "u"}).payload_policy.mode == "full"


@pytest.mark.parametrize("env, message", [
    ({"PGLOG_LOG_PAYLOADS": "some"}, "'some' is not one of full, redacted, metadata"),
    ({"PGLOG_LOG_PAYLOADS": "redacted", "PGLOG_REDACT_PATTERNS_FILE": "/nonexistent/p.json"}, "/nonexistent/p.json"),
])
def test_bad_policy_settings_refuse_to_start_with_a_clear_error(env, message):
    base = {"PGLOG_DB_HOST": "h", "PGLOG_DB_NAME": "d", "PGLOG_DB_USER": "u"}
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**base, **env})


@pytest.mark.parametrize("specs, message", [
    ([{"name": "bad", "regex": "(unclosed"}], "'bad'"),
    ([{"name": "empty", "regex": "x*"}], "matches the empty string"),
    ([{"name": "Bad Name", "regex": "x"}], "is not"),
    ({"name": "x"}, "non-empty JSON list"),
    ([{"name": "hint", "regex": "a", "requires": "a"}], "requires must be a list"),
])
def test_bad_patterns_name_the_entry(specs, message):
    with pytest.raises(privacy.PolicyError, match=message):
        privacy.compile_patterns(specs)


def _seeded_calls(n: int, start: int = 0) -> list[dict]:
    text = " | ".join(SEEDED.values())
    return [make_slo(start + i, content=f"please store {text}", end_user=SEEDED["email"],
                     tag=f"run:test", request_tags=["run:test", f"owner:{SEEDED['email']}"],
                     response={"choices": [{"message": {"content": f"noted: {text}"}}]},
                     model_parameters={"user": SEEDED["email"], "temperature": 0})
            for i in range(n)]


def _found(texts: list[str]) -> list[str]:
    return sorted({n for n in NEEDLES for t in texts if n in t})


def _everything_stored(cluster, spool_dir: str) -> list[str]:
    """Every place a record can rest: both tables as text, the spool and rejected files, and a
    plain-format pg_dump of the database (what any backup of it holds)."""
    rows = query(cluster, "SELECT q::text || ' ' || coalesce(r::text, '') FROM requests q"
                          " LEFT JOIN responses r ON r.request_id = q.id")
    files = []
    for path in glob.glob(os.path.join(spool_dir, "*")):
        with open(path, encoding="utf-8", errors="replace") as f:
            files.append(f.read())
    dump = subprocess.run(["runuser", "-u", "postgres", "--", os.path.join(cluster.bindir, "pg_dump"),
                           "-h", cluster.sock, "-p", str(cluster.port), "--data-only", DB],
                          check=True, capture_output=True, text=True).stdout
    return [r for (r,) in rows] + files + [dump]


def _run_through_every_place(writer_env, monkeypatch, clean_db, mode: str) -> tuple[list[str], dict]:
    monkeypatch.setenv("PGLOG_LOG_PAYLOADS", mode)
    w = Writer(Settings.from_env())
    w.start()
    try:
        records_ = [records.capture(s) for s in _seeded_calls(5)]
        bad = make_slo(99, content=" ".join(SEEDED.values()), prompt_tokens=2 ** 40)  # DataError -> rejected file
        for r in records_ + [records.capture(bad)]:
            w.submit(r)
        assert wait_until(lambda: w.counters["written"] == 5 and w.counters["failed"] == 1, 30)
        clean_db.stop()  # the next calls rest in the spool
        try:
            for s in _seeded_calls(4, start=10):
                w.submit(records.capture(s))
            assert wait_until(lambda: w.counters["spooled"] == 4, 30)
            spool_texts = []
            for path in glob.glob(os.path.join(w.spool.directory, "seg-*")):
                with open(path, encoding="utf-8") as f:
                    spool_texts.append(f.read())
            assert spool_texts, "the spool holds the outage's records"
        finally:
            clean_db.start()
        assert wait_until(lambda: w.counters["replayed"] == 4, 30)
    finally:
        w.stop(timeout=5)
    return spool_texts + _everything_stored(clean_db, w.spool.directory), dict(w.counters)


def test_redacted_mode_leaves_no_seeded_value_anywhere(writer_env, monkeypatch, clean_db):
    texts, counters = _run_through_every_place(writer_env, monkeypatch, clean_db, "redacted")
    assert counters["dropped"] == 0 and counters["written"] + counters["replayed"] == 9
    assert _found(texts) == []
    stored = " ".join(texts)
    for name in SEEDED:
        assert f"[REDACTED:{name}]" in stored, name  # masked, not silently emptied
    assert query(clean_db, "SELECT count(*) FROM requests")[0][0] == 9


def test_full_mode_keeps_them_so_the_search_above_can_fail(writer_env, monkeypatch, clean_db):
    texts, _ = _run_through_every_place(writer_env, monkeypatch, clean_db, "full")
    assert _found(texts) == sorted(set(NEEDLES) - {"4111111111111111"})  # seeded with dashes only
