"""The `litellm-pglog` console script, run as a subprocess like validate.yml and the role do."""

import json
import os
import subprocess

from helpers import make_slo
from litellm_pglog import records
from litellm_pglog.config import Settings
from litellm_pglog.schema import code_head
from litellm_pglog.spool import Spool
from litellm_pglog.writer import Writer
from pgcluster import OWNER, OWNER_PW, WRITER, wait_until
from proxyrig import cli



def run(env, *args, check=True):
    full = {k: v for k, v in os.environ.items() if not k.startswith("PGLOG_")}
    full.update(env)
    return subprocess.run([*cli(), *args], env=full, capture_output=True, text=True, check=check)


def test_migrate_prints_json_and_is_idempotent(cluster, migrated):
    out = run(cluster.env(OWNER, OWNER_PW), "migrate", "--grant-to", WRITER)
    assert json.loads(out.stdout) == {"changed": False, "revision": code_head(), "previous_revision": code_head(), "granted": []}


def test_migrate_pending_says_whether_a_migration_would_run_and_changes_nothing(cluster, migrated):
    assert json.loads(run(cluster.env(OWNER, OWNER_PW), "migrate", "--pending").stdout) == {
        "pending": False, "revision": code_head(), "head": code_head()}
    cluster.create_db("cli_pending")
    try:
        env = cluster.env(OWNER, OWNER_PW, "cli_pending")
        for _ in range(2):  # the question is asked twice: the first answer did not migrate anything
            assert json.loads(run(env, "migrate", "--pending").stdout) == {
                "pending": True, "revision": None, "head": code_head()}
        run(env, "migrate")
        assert json.loads(run(env, "migrate", "--pending").stdout)["pending"] is False
    finally:
        cluster.drop_db("cli_pending")


def test_migrate_as_writer_fails(cluster, migrated):
    cluster.create_db("cli_fresh")
    try:
        res = run(cluster.env(db="cli_fresh"), "migrate", check=False)
        assert res.returncode != 0 and "permission denied" in res.stderr
    finally:
        cluster.drop_db("cli_fresh")


def test_config_error_is_clear():
    res = run({}, "status", check=False)
    assert res.returncode == 2 and "missing environment: PGLOG_DB_HOST" in res.stderr
    res = run({"PGLOG_DB_HOST": "h", "PGLOG_DB_NAME": "d", "PGLOG_DB_USER": "u", "PGLOG_BATCH_SIZE": "many"},
              "status", check=False)
    assert res.returncode == 2 and "PGLOG_BATCH_SIZE" in res.stderr


def test_evidence_commands(writer_env, clean_db):
    w = Writer(Settings.from_env())
    w.start()
    slos = [make_slo(i, tag="run:cli") for i in range(5)] + [make_slo(9, tag="run:cli", status="failure")]
    slos.append(make_slo(1, tag="run:other"))
    for s in slos:
        w.submit(records.capture(s))
    assert wait_until(lambda: w.counters["written"] == 7)
    w.stop(timeout=5)
    env = clean_db.env()
    head = run(env, "evidence", "requests-head", "--tag", "run:cli").stdout
    assert "count: 6" in head and "(6 rows)" in head and slos[0]["id"] in head and slos[-1]["id"] not in head
    resp = run(env, "evidence", "responses-head", "--tag", "run:cli").stdout
    assert "count: 6" in resp and " success " in resp and " failure " in resp
    jc = json.loads(run(env, "evidence", "join-check", "--tag", "run:cli", "--expected", "6", "--json").stdout)
    assert (jc["request_rows"], jc["response_rows"], jc["matched_pairs"], jc["integrity_pct"]) == (6, 6, 6, 100.0)
    # an orphan request (response deleted by the owner) and a missing call show up
    with clean_db.admin("litellm_db") as conn:
        conn.cursor().execute("DELETE FROM responses WHERE request_id = (SELECT id FROM requests WHERE call_id = %s)",
                              (slos[0]["id"],))
    jc = json.loads(run(env, "evidence", "join-check", "--tag", "run:cli", "--expected", "7", "--json").stdout)
    assert jc["requests_without_response"] == 1 and jc["matched_pairs"] == 5
    assert jc["integrity_pct"] == round(100 * 5 / 7, 2)
    text = run(env, "evidence", "join-check", "--tag", "run:cli").stdout
    assert "requests_without_response" in text and "integrity_pct" in text


def test_status_and_replay(writer_env, clean_db):
    settings = Settings.from_env()
    Spool(settings.spool_dir, 16).write([records.prepare(records.capture(make_slo(i, tag="run:replay")), 262144)
                                         for i in range(4)])
    st = json.loads(run(writer_env, "status", "--json", check=False).stdout)
    assert st["in_sync"] is True and st["spool_segments"] == 1
    out = json.loads(run(writer_env, "replay").stdout)
    assert out == {"replayed": 4, "duplicates": 0, "failed": 0, "spool_segments_left": 0}
    st = json.loads(run(writer_env, "status", "--json").stdout)
    assert st["spool_segments"] == 0 and st["stats"]


def test_evidence_counts_only_the_given_keys_rows(writer_env, clean_db):
    """Tags are chosen by the caller: anyone with a key can tag calls with a run's tag. With
    --key-from-stdin the evidence counts the rows made with that key only, and reports the
    tag's other rows apart, never silently."""
    w = Writer(Settings.from_env())
    w.start()
    mine = [make_slo(i, tag="run:keyed") for i in range(3)]  # made with the key "key" (helpers)
    other = {"user_api_key_hash": records.key_digest("someone-else-key")}
    theirs = [make_slo(10 + i, tag="run:keyed", metadata=other) for i in range(2)]
    for s in mine + theirs:
        w.submit(records.capture(s))
    assert wait_until(lambda: w.counters["written"] == 5)
    w.stop(timeout=5)
    env = clean_db.env()

    def ev(what, *extra, key=None):
        full = {k: v for k, v in os.environ.items() if not k.startswith("PGLOG_")}
        full.update(env)
        args = [*cli(), "evidence", what, "--tag", "run:keyed", *extra] + (["--key-from-stdin"] if key else [])
        return subprocess.run(args, env=full, input=(key + "\n") if key else "", capture_output=True, text=True,
                              check=True).stdout

    everyone = json.loads(ev("join-check", "--json"))
    assert everyone["request_rows"] == 5 and everyone["key_hash12"] is None and "other_key_rows" not in everyone
    jc = json.loads(ev("join-check", "--expected", "3", "--json", key="key"))
    assert (jc["request_rows"], jc["response_rows"], jc["matched_pairs"], jc["integrity_pct"]) == (3, 3, 3, 100.0)
    assert jc["other_key_rows"] == 2 and jc["key_hash12"] == records.stored_key_hash("key")[:12]
    head = json.loads(ev("requests-head", "--json", key="key"))
    assert head["count"] == 3 and {r["call_id"] for r in head["rows"]} == {s["id"] for s in mine}
    resp = json.loads(ev("responses-head", "--json", key="key"))
    assert resp["count"] == 3 and resp["by_status"]["success"]["responses"] == 3 and resp["other_key_rows"] == 2
    text = ev("requests-head", key="key")
    assert "count: 3" in text and "2 rows of the tag made with other keys are not counted" in text
    # a missing key is a usage error, not an unfiltered answer
    full = {k: v for k, v in os.environ.items() if not k.startswith("PGLOG_")}
    full.update(env)
    res = subprocess.run([*cli(), "evidence", "join-check", "--tag", "run:keyed", "--key-from-stdin"], env=full,
                         input="", capture_output=True, text=True)
    assert res.returncode == 2 and "no key on stdin" in res.stderr


def test_connect_check_describes_a_new_connection(cluster, migrated):
    out = run(cluster.env(), "connect-check")
    c = json.loads(out.stdout)
    assert c["connected"] is True and c["client_addr"] == "127.0.0.1" and c["server_addr"] == "127.0.0.1"
    # SYSTEM_USER needs PostgreSQL 16 (the host's test cluster may be older): then channel_binding=require
    assert c["auth"]["method"].startswith("scram-sha-256") and c["ssl"]["server_ssl"] is True
    assert "***" in c["dsn"] and WRITER in c["dsn"]
    bad = run({**cluster.env(), "PGLOG_DB_PASSWORD": "not-the-password"}, "connect-check", check=False)
    c = json.loads(bad.stdout)
    assert bad.returncode == 1 and c["connected"] is False and "password authentication failed" in c["error"]
    assert "not-the-password" not in bad.stdout + bad.stderr


def test_migrate_on_a_read_only_server_says_so_without_a_traceback(cluster, migrated):
    """A migration pointed at a standby (or a demoted primary) alone: a clear message and
    exit 2, nothing half-done (before: a raw InternalError traceback)."""
    from conftest import read_only_role

    cluster.create_db("cli_readonly")
    try:
        with read_only_role(cluster, OWNER):
            res = run(cluster.env(OWNER, OWNER_PW, "cli_readonly"), "migrate", check=False)
        assert res.returncode == 2, res.stderr
        assert "read-only" in res.stderr and "primary" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert json.loads(run(cluster.env(OWNER, OWNER_PW, "cli_readonly"), "migrate", "--pending").stdout)["pending"]
    finally:
        cluster.drop_db("cli_readonly")
