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
