"""End to end: the real `litellm` proxy (1.108.7) with our callback and custom_auth, the
upstream stub, the real PostgreSQL cluster (SCRAM + TLS). Slow, but part of the default run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import query
from litellm_pglog import records
from litellm_pglog.schema import code_head
from pgcluster import DB, wait_until
from proxyrig import MASTER_KEY, TEAM_KEY, Proxy, Stub, cli, http

pytestmark = pytest.mark.slow



def tag() -> str:
    return f"run:{uuid.uuid4().hex[:12]}"


def run_rows(cluster, t):
    return query(cluster, "SELECT count(*) FROM requests WHERE tags @> %s::jsonb", (json.dumps([t]),))[0][0]


def join_check(cluster, t, expected):
    env = {**os.environ, **cluster.env()}
    out = subprocess.run([*cli(), "evidence", "join-check", "--tag", t, "--expected", str(expected), "--json"],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxy(cluster, migrated, stub, tmp_path_factory):
    p = Proxy(str(tmp_path_factory.mktemp("proxy")), stub.port, {**cluster.env(), "PGLOG_STATS_INTERVAL_S": "1"})
    p.start()
    yield p
    rc = p.stop()
    assert rc == 0, p.tail()
    assert p.events("shutdown"), "no drain on SIGTERM"


def test_missing_and_wrong_key_get_401(proxy):
    body = {"model": "gpt-stub", "messages": [{"role": "user", "content": "hi"}]}
    status, _, err = http("POST", proxy.url + "/v1/chat/completions", body)
    assert status == 401, err
    status, _, err = http("POST", proxy.url + "/v1/chat/completions", body, key="sk-wrong")
    assert status == 401, err
    assert http("POST", proxy.url + "/v1/chat/completions", body, key=MASTER_KEY)[0] == 200
    assert http("POST", proxy.url + "/v1/chat/completions", body, key=TEAM_KEY)[0] == 200


def test_n_calls_give_n_request_and_n_response_rows(proxy, cluster):
    t, n_ok, n_fail = tag(), 30, 10
    contents = [f"message {i} alpha beta" for i in range(n_ok)] + [f"fail {i} #stub:fail=500" for i in range(n_fail)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: proxy.chat(c, t), contents))
    assert [r[0] for r in results] == [200] * n_ok + [500] * n_fail
    n = n_ok + n_fail
    assert wait_until(lambda: run_rows(cluster, t) == n, 20)
    jc = join_check(cluster, t, n)
    assert (jc["request_rows"], jc["response_rows"], jc["matched_pairs"]) == (n, n, n)
    assert jc["requests_without_response"] == 0 and jc["responses_without_request"] == 0
    assert jc["integrity_pct"] == 100.0 and jc["duplicate_call_ids"] == 0
    assert jc["delay_p99_ms"] is not None and jc["delay_p99_ms"] < 5000
    # tokens computed by the stub from the input: prompt = 4 words + 3, completion = "echo:" + 4 words
    ok = query(cluster, """SELECT r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd::float8,
                                  q.api_key_hash, q.model
                           FROM responses r JOIN requests q ON q.id = r.request_id
                           WHERE q.tags @> %s::jsonb AND r.status = 'success'""", (json.dumps([t]),))
    assert len(ok) == n_ok
    for pt, ct, tt, cost, key_hash, model in ok:
        assert (pt, ct, tt) == (7, 5, 12)
        assert cost == pytest.approx(7 * 0.000001 + 5 * 0.000002)
        assert key_hash == records.stored_key_hash(TEAM_KEY) and model == "gpt-stub"
    # call_id is LiteLLM's call id, the x-litellm-call-id header the client got
    header_ids = {r[1].get("x-litellm-call-id") for r in results[:n_ok]}
    db_ids = {c for (c,) in query(cluster, "SELECT call_id FROM requests WHERE tags @> %s::jsonb", (json.dumps([t]),))}
    assert None not in header_ids and header_ids <= db_ids
    # the header LiteLLM returns agrees with the row
    assert float(results[0][1]["x-litellm-response-cost"]) == pytest.approx(0.000017)
    fails = query(cluster, """SELECT r.body->'error'->>'message' FROM responses r JOIN requests q ON q.id = r.request_id
                              WHERE q.tags @> %s::jsonb AND r.status = 'failure'""", (json.dumps([t]),))
    assert len(fails) == n_fail and all("stub failure 500" in m for (m,) in fails)


def test_no_raw_key_reaches_the_database(proxy, cluster):
    t = tag()
    assert proxy.chat("key check", t)[0] == 200
    assert wait_until(lambda: run_rows(cluster, t) == 1, 10)
    for key in (TEAM_KEY, MASTER_KEY):
        hits = query(cluster, "SELECT count(*) FROM requests q LEFT JOIN responses r ON r.request_id = q.id"
                              " WHERE q.payload::text LIKE %s OR r.body::text LIKE %s OR q.api_key_hash = %s",
                     (f"%{key}%", f"%{key}%", key))
        assert hits == [(0,)]


def test_bad_input(proxy, cluster):
    t = tag()
    nul = "before\x00after"
    big = "w " * (400 * 1024)  # 800 KiB prompt: under the 1 MiB body limit, over PGLOG_MAX_PAYLOAD_BYTES
    odd = "ünïcødé 日本語 🚀 Ω"
    sql = "'); DROP TABLE requests; -- SELECT * FROM pg_authid"
    for content in (nul, big, odd, sql):
        status, _, body = proxy.chat(content, t)
        assert status == 200, body
    status, _, body = proxy.chat("x", t, model="no-such-model")
    assert status == 400, body
    status, _, _ = http("POST", proxy.url + "/v1/chat/completions", raw=b'{"model": "gpt-stub", "messages": [',
                        key=TEAM_KEY)
    assert status == 400
    status, _, _ = http("POST", proxy.url + "/v1/chat/completions", raw=b'{"model": "gpt-stub"}', key=TEAM_KEY)
    assert status in (400, 422)
    assert wait_until(lambda: run_rows(cluster, t) == 5, 20)
    got = dict(query(cluster, """SELECT left(q.payload->'messages'->0->>'content', 40), r.status
                                 FROM requests q JOIN responses r ON r.request_id = q.id
                                 WHERE q.tags @> %s::jsonb AND q.payload ? 'messages'""", (json.dumps([t]),)))
    assert got[nul.replace("\x00", "\\u0000")] == "success"
    assert got[odd] == "success" and got[sql[:40]] == "success"
    trunc = query(cluster, "SELECT count(*) FROM requests WHERE tags @> %s::jsonb AND payload->>'_truncated' = 'true'",
                  (json.dumps([t]),))
    assert trunc == [(1,)]
    unknown = query(cluster, """SELECT q.model, r.status FROM requests q JOIN responses r ON r.request_id = q.id
                                WHERE q.tags @> %s::jsonb AND r.status = 'failure'""", (json.dumps([t]),))
    assert unknown == [("", "failure")]
    assert query(cluster, "SELECT count(*) FROM requests") [0][0] > 0  # table still there


def test_stream_is_logged_once(proxy, cluster):
    t = tag()
    req = {"model": "gpt-stub", "stream": True, "messages": [{"role": "user", "content": "one two three"}],
           "metadata": {"tags": [t]}, "stream_options": {"include_usage": True}}
    import urllib.request

    r = urllib.request.Request(proxy.url + "/v1/chat/completions", json.dumps(req).encode(), method="POST",
                               headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(r, timeout=30) as resp:
        assert b"data: [DONE]" in resp.read()
    assert wait_until(lambda: run_rows(cluster, t) == 1, 10)
    assert query(cluster, """SELECT q.stream, r.prompt_tokens, r.completion_tokens FROM requests q
                             JOIN responses r ON r.request_id = q.id WHERE q.tags @> %s::jsonb""",
                 (json.dumps([t]),)) == [(True, 6, 4)]


def test_stream_stores_time_to_first_token(proxy, cluster):
    """responses.ttft_ms (0003): the upstream holds the answer 400 ms, then streams its words
    150 ms apart; the first chunk comes after the hold, long before the end. A non-streaming
    call has none."""
    import urllib.request

    t = tag()
    for stream in (True, False):
        req = {"model": "gpt-stub", "stream": stream, "metadata": {"tags": [t]},
               "messages": [{"role": "user", "content": "one two three four five six #stub:sleep=400 #stub:chunk_ms=150"}]}
        r = urllib.request.Request(proxy.url + "/v1/chat/completions", json.dumps(req).encode(), method="POST",
                                   headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=30) as resp:
            resp.read()
    assert wait_until(lambda: run_rows(cluster, t) == 2, 10)
    got = dict(query(cluster, """SELECT q.stream, array[r.ttft_ms, r.latency_ms] FROM requests q
                                  JOIN responses r ON r.request_id = q.id WHERE q.tags @> %s::jsonb""",
                     (json.dumps([t]),)))
    ttft, latency = got[True]
    assert 400 <= ttft <= latency - 600, (ttft, latency)  # ~6 words x 150 ms come after the first chunk
    assert got[False][0] is None


def test_pool_stats_lines_and_file(proxy):
    assert wait_until(lambda: proxy.events("pool_stats"), 10)
    last = proxy.events("pool_stats")[-1]
    assert last["pool"]["connects"] >= 1 and last["pool"]["checkouts"] >= last["pool"]["connects"]
    assert last["counters"]["dropped"] == 0
    connect = proxy.events("connect")[0]
    assert connect["ssl"]["server_ssl"] is True and connect["auth"]["method"].startswith("scram-sha-256")
    # the server's view of where the connection comes from (what pg_hba chose its rule by)
    assert connect["client_addr"] == "127.0.0.1" and connect["server_addr"] == "127.0.0.1"
    assert isinstance(connect["client_port"], int)
    files = os.listdir(os.path.join(proxy.workdir, "state"))
    assert any(f.startswith("stats-") and f.endswith(".json") for f in files)


def test_outage_while_requests_flow(proxy, cluster):
    t, before, during, after = tag(), 10, 20, 10
    for i in range(before):
        assert proxy.chat(f"before {i}", t)[0] == 200
    assert wait_until(lambda: run_rows(cluster, t) == before, 10)
    cluster.stop()
    try:
        for i in range(during):
            assert proxy.chat(f"during {i}", t)[0] == 200  # the gateway keeps serving
        assert wait_until(lambda: (proxy.events("pool_stats") or [{}])[-1].get("counters", {}).get("spooled", 0)
                          >= during, 20)
    finally:
        cluster.start()
    for i in range(after):
        assert proxy.chat(f"after {i}", t)[0] == 200
    n = before + during + after
    assert wait_until(lambda: run_rows(cluster, t) == n, 40), run_rows(cluster, t)
    jc = join_check(cluster, t, n)
    assert jc["matched_pairs"] == n and jc["duplicate_call_ids"] == 0 and jc["integrity_pct"] == 100.0
    assert not [f for f in os.listdir(os.path.join(proxy.workdir, "spool")) if f.startswith("seg-")]


def test_refuses_to_start_on_schema_mismatch(cluster, migrated, stub, tmp_path):
    with cluster.admin(DB) as conn:
        conn.cursor().execute("UPDATE alembic_version SET version_num = 'not-this-code'")
    p = Proxy(str(tmp_path / "refuse"), stub.port, cluster.env())
    try:
        with pytest.raises(RuntimeError, match="proxy exited"):
            p.start()
        assert "not-this-code" in json.dumps(p.events("startup_refused"))
    finally:
        p.kill()
        with cluster.admin(DB) as conn:
            conn.cursor().execute("UPDATE alembic_version SET version_num = %s", (code_head(),))


def test_restart_with_records_queued_and_db_down_loses_nothing(cluster, migrated, stub, tmp_path):
    t = tag()
    env = {**cluster.env(), "PGLOG_FLUSH_MS": "60000", "PGLOG_BATCH_SIZE": "100000"}
    p = Proxy(str(tmp_path / "restart"), stub.port, env)
    p.start()
    try:
        for i in range(15):
            assert p.chat(f"queued {i}", t)[0] == 200
        assert run_rows(cluster, t) == 0  # held in the writer's queue (60 s flush window)
        assert p.stop() == 0  # SIGTERM: drained to the database
        assert run_rows(cluster, t) == 15
        # second round: the database is down when the proxy stops -> spool -> replay at next start
        p.start()
        cluster.stop()
        try:
            for i in range(12):
                assert p.chat(f"spooled {i}", t)[0] == 200
            assert p.stop() == 0
            assert [f for f in os.listdir(os.path.join(p.workdir, "spool")) if f.startswith("seg-")]
        finally:
            cluster.start()
        p.start()
        assert wait_until(lambda: run_rows(cluster, t) == 27, 30)
        jc = join_check(cluster, t, 27)
        assert jc["matched_pairs"] == 27 and jc["duplicate_call_ids"] == 0
    finally:
        p.kill()
