"""Issue 11 (security and audit correctness) against the real `litellm` proxy with our callback,
custom_auth and guard, the upstream stub and the real PostgreSQL cluster: what a hostile caller
can send must neither hide, fake nor mislabel a logged call."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from conftest import query
from pgcluster import wait_until
from litellm_pglog import records
from proxyrig import MASTER_KEY, TEAM_KEY, Proxy, Stub, cli, http

pytestmark = pytest.mark.slow


def tag() -> str:
    return f"run:{uuid.uuid4().hex[:12]}"


def run_rows(cluster, t):
    return query(cluster, "SELECT count(*) FROM requests WHERE tags @> %s::jsonb", (json.dumps([t]),))[0][0]


def evidence(cluster, what, t, *extra):
    env = {**os.environ, **cluster.env()}
    out = subprocess.run([*cli(), "evidence", what, "--tag", t, "--json", *extra],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def proxy(cluster, migrated, stub, tmp_path_factory):
    p = Proxy(str(tmp_path_factory.mktemp("secproxy")), stub.port, {**cluster.env(), "PGLOG_FLUSH_MS": "50"})
    p.start()
    yield p
    assert p.stop() == 0, p.tail()


def chat_with_call_id(proxy, t, call_id, content="same id"):
    body = {"model": "gpt-stub", "messages": [{"role": "user", "content": content}], "metadata": {"tags": [t]}}
    import urllib.request

    req = urllib.request.Request(proxy.url + "/v1/chat/completions", json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {TEAM_KEY}", "Content-Type": "application/json",
                                          "x-litellm-call-id": call_id})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.headers.get("x-litellm-call-id")


# ---- finding 1: the caller cannot keep calls out of the log -------------------------------------------
def test_reused_or_prefix_equal_call_ids_still_give_every_call_its_rows(proxy, cluster):
    t = tag()
    same = f"fixed-{uuid.uuid4().hex}"
    long_a = "L" * 255 + "a"  # LiteLLM takes caller call ids up to 256 characters
    long_b = "L" * 255 + "b"
    ids = [same] * 4 + ["P" * 64 + "-first", "P" * 64 + "-second", long_a, long_b]
    for i, call_id in enumerate(ids):
        status, echoed = chat_with_call_id(proxy, t, call_id, f"call {i}")
        assert status == 200 and echoed == call_id
    n = len(ids)
    assert wait_until(lambda: run_rows(cluster, t) == n, 20), run_rows(cluster, t)
    stored = [c for (c,) in query(cluster, "SELECT call_id FROM requests WHERE tags @> %s::jsonb ORDER BY id",
                                  (json.dumps([t]),))]
    assert sorted(stored) == sorted(ids)  # stored verbatim, searchable, none merged
    jc = evidence(cluster, "join-check", t, "--expected", str(n))
    assert (jc["request_rows"], jc["response_rows"], jc["matched_pairs"], jc["integrity_pct"]) == (n, n, n, 100.0)
    assert jc["duplicate_call_ids"] == 3  # reported as information, not as missing rows
    assert not proxy.events("duplicate")


# ---- finding 3: no raw key is ever stored ---------------------------------------------------------------
def test_wrong_keys_of_any_shape_are_refused_and_stored_only_hashed(proxy, cluster):
    keys = [os.urandom(32).hex(), "sk-" + os.urandom(16).hex(), "Zz" + os.urandom(12).hex(), os.urandom(32).hex().upper()]
    body = {"model": "gpt-stub", "messages": [{"role": "user", "content": "wrong key"}]}
    for key in keys:
        status, _, err = http("POST", proxy.url + "/v1/chat/completions", body, key=key)
        assert status == 401, err
    t = tag()
    assert proxy.chat("right key", t)[0] == 200
    assert wait_until(lambda: run_rows(cluster, t) == 1, 10)  # one writer, in order: the 401 rows are in
    for key in keys + [TEAM_KEY, MASTER_KEY]:
        hits = query(cluster, "SELECT count(*) FROM requests q LEFT JOIN responses r ON r.request_id = q.id"
                              " WHERE strpos(lower(q::text), lower(%s)) > 0 OR strpos(lower(r::text), lower(%s)) > 0",
                     (key, key))
        assert hits == [(0,)], key
    assert query(cluster, "SELECT api_key_hash FROM requests WHERE tags @> %s::jsonb", (json.dumps([t]),)) == \
        [(records.stored_key_hash(TEAM_KEY),)]

    def logged(key):  # a refused call is logged under a hash of the key it presented, never the key
        return query(cluster, "SELECT count(*) FROM requests WHERE api_key_hash IN (%s, %s)",
                     (records.key_hash(key), records.stored_key_hash(key)))[0][0]

    assert wait_until(lambda: all(logged(k) == 1 for k in keys), 10), [logged(k) for k in keys]
    assert query(cluster, "SELECT count(*) FROM requests WHERE api_key_hash <> '' AND api_key_hash NOT LIKE 'h1:%%'") \
        == [(0,)]


# ---- finding 6: hostile bodies ------------------------------------------------------------------------
NON_FINITE_BODIES = [
    '{"model": "gpt-stub", "messages": [{"role": "user", "content": "nan temperature"}], "temperature": NaN, %s}',
    '{"model": "gpt-stub", "messages": [{"role": "user", "content": "inf metadata"}], %s, "top_p": Infinity}',
    '{"model": "gpt-stub", "messages": [{"role": "user", "content": "overflow"}], "max_tokens": 1e400, %s}',
    '{"model": "gpt-stub", "messages": [{"role": "user", "content": "minus inf"}], "presence_penalty": -Infinity, %s}',
]


def test_non_finite_numbers_never_cost_a_call_its_rows(proxy, cluster):
    t = tag()
    meta = '"metadata": {"tags": ["%s"]}' % t
    statuses = []
    for body in NON_FINITE_BODIES:
        status, _, err = http("POST", proxy.url + "/v1/chat/completions", raw=(body % meta).encode(), key=TEAM_KEY)
        statuses.append(status)
        assert status != 500 or "Out of range float" in json.dumps(err), err
    marker = tag()
    assert proxy.chat("after the non-finite bodies", marker)[0] == 200
    assert wait_until(lambda: run_rows(cluster, marker) == 1, 10)
    # every answered call has its request row and response row; nothing went to the rejected file
    logged = query(cluster, "SELECT count(*) FROM requests q JOIN responses r ON r.request_id = q.id"
                            " WHERE q.tags @> %s::jsonb OR q.payload::text LIKE %s", (json.dumps([t]), "%" + t + "%"))
    assert logged == [(len(NON_FINITE_BODIES),)], statuses
    spool = os.path.join(proxy.workdir, "spool")
    assert not [f for f in os.listdir(spool) if f.startswith("rejected-")]
