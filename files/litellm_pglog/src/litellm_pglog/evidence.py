"""The SQL of the evidence files (validate.yml calls `litellm-pglog evidence ...`).

Every number comes from one query against the live tables; nothing is computed elsewhere.
A run is the set of request rows whose `tags` JSONB array contains the run tag and, when a
key is given (`--key-from-stdin`), whose `api_key_hash` is that key's stored hash.

Why the key: tags (and `end_user`) are chosen by the caller. Any caller with a key can put a
run's tag on its own calls and so add rows to that run's evidence. Only `api_key_hash` is
set by the gateway (from the key it authenticated), so validate.yml counts the rows of its
tag made with its own key, and reports the tag's rows made with other keys apart
(`other_key_rows`), never silently.

Since revision 0002 a row's identity is (created_at, event_id), chosen by the logger; LiteLLM's
call id is what the client saw (x-litellm-call-id) and a caller may reuse it. join-check reports
`duplicate_call_ids` (rows of the run minus distinct call ids) as information: calls sharing a
call id each still have their own request/response pair, so they do not lower `integrity_pct`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

# The run: rows of the tag, and of the key when one is given (:key_hash NULL = any key).
_RUN = ("q.tags @> jsonb_build_array(CAST(:tag AS text))"
        " AND (CAST(:key_hash AS text) IS NULL OR q.api_key_hash = CAST(:key_hash AS text))")

REQUESTS_HEAD = text("""
SELECT q.id, q.event_id, q.call_id, q.created_at, q.logged_at, q.model, q.call_type, q.stream,
       left(q.api_key_hash, 12) AS api_key_hash12, q.end_user, q.tags,
       octet_length(q.payload::text) AS payload_bytes
FROM requests q
WHERE """ + _RUN + """
ORDER BY q.id
LIMIT :limit
""")

REQUESTS_COUNT = text("SELECT count(*) FROM requests q WHERE " + _RUN)

# Rows that carry the tag but were made with another key (only asked when a key is given).
OTHER_KEY_ROWS = text("""
SELECT count(*) FROM requests q
WHERE q.tags @> jsonb_build_array(CAST(:tag AS text))
  AND q.api_key_hash IS DISTINCT FROM CAST(:key_hash AS text)
""")

RESPONSES_HEAD = text("""
SELECT r.id, r.request_id, q.call_id, r.created_at, r.status, r.prompt_tokens,
       r.completion_tokens, r.total_tokens, r.cost_usd, round(r.latency_ms::numeric, 1) AS latency_ms
FROM responses r JOIN requests q ON q.id = r.request_id
WHERE """ + _RUN + """
ORDER BY r.id
LIMIT :limit
""")

RESPONSES_TOTALS = text("""
SELECT count(*) AS responses,
       count(*) FILTER (WHERE r.status = 'success') AS success,
       count(*) FILTER (WHERE r.status = 'failure') AS failure,
       count(*) FILTER (WHERE r.status = 'client_disconnected') AS client_disconnected,
       count(*) FILTER (WHERE r.status NOT IN ('success', 'failure', 'client_disconnected')) AS other_status,
       coalesce(sum(r.prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(r.completion_tokens), 0) AS completion_tokens,
       coalesce(sum(r.total_tokens), 0) AS total_tokens,
       coalesce(sum(r.cost_usd), 0) AS cost_usd
FROM responses r JOIN requests q ON q.id = r.request_id
WHERE """ + _RUN + """
""")

# Every status that occurs in the run, with its tokens and cost: a verdict must not count a
# client_disconnected answer (or any status it does not know) as a clean success.
RESPONSES_BY_STATUS = text("""
SELECT r.status, count(*) AS responses, coalesce(sum(r.total_tokens), 0) AS total_tokens,
       coalesce(sum(r.cost_usd), 0) AS cost_usd
FROM responses r JOIN requests q ON q.id = r.request_id
WHERE """ + _RUN + """
GROUP BY r.status
ORDER BY r.status
""")

JOIN_CHECK = text("""
WITH run AS (
    SELECT q.id, q.call_id, q.logged_at FROM requests q
    WHERE """ + _RUN + """
), pairs AS (
    SELECT run.id, count(r.id) AS n, max(r.created_at) AS responded_at, run.logged_at
    FROM run LEFT JOIN responses r ON r.request_id = run.id
    GROUP BY run.id, run.logged_at
), delays AS (
    SELECT extract(epoch FROM (logged_at - responded_at)) * 1000.0 AS ms FROM pairs WHERE n = 1
)
SELECT
    (SELECT count(*) FROM run) AS request_rows,
    (SELECT count(*) FROM responses r JOIN run ON run.id = r.request_id) AS response_rows,
    (SELECT count(*) FROM pairs WHERE n = 1) AS matched_pairs,
    (SELECT count(*) FROM pairs WHERE n = 0) AS requests_without_response,
    (SELECT count(*) FROM pairs WHERE n > 1) AS requests_with_several_responses,
    (SELECT count(*) FROM responses r LEFT JOIN requests q ON q.id = r.request_id WHERE q.id IS NULL)
        AS responses_without_request,
    (SELECT count(*) - count(DISTINCT call_id) FROM run) AS duplicate_call_ids,
    (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM delays) AS delay_p50_ms,
    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM delays) AS delay_p99_ms,
    (SELECT max(ms) FROM delays) AS delay_max_ms
""")


def _rows(conn: Connection, stmt: Any, **params: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    result = conn.execute(stmt, params)
    return list(result.keys()), [tuple(r) for r in result]


def _scope(conn: Connection, tag: str, key_hash: str | None) -> dict[str, Any]:
    """What the run is, as every evidence output states it: the tag, and the key filter
    (the first 12 characters of the stored hash, as requests-head shows api_key_hash12)
    with the count of the tag's rows made with other keys."""
    out: dict[str, Any] = {"tag": tag, "key_hash12": key_hash[:12] if key_hash else None}
    if key_hash:
        out["other_key_rows"] = conn.execute(OTHER_KEY_ROWS, {"tag": tag, "key_hash": key_hash}).scalar_one()
    return out


def requests_head(conn: Connection, tag: str, limit: int, key_hash: str | None = None) -> dict[str, Any]:
    p = {"tag": tag, "key_hash": key_hash}
    cols, rows = _rows(conn, REQUESTS_HEAD, limit=limit, **p)
    count = conn.execute(REQUESTS_COUNT, p).scalar_one()
    return {**_scope(conn, tag, key_hash), "columns": cols, "rows": rows, "count": count}


def responses_head(conn: Connection, tag: str, limit: int, key_hash: str | None = None) -> dict[str, Any]:
    p = {"tag": tag, "key_hash": key_hash}
    cols, rows = _rows(conn, RESPONSES_HEAD, limit=limit, **p)
    totals = dict(conn.execute(RESPONSES_TOTALS, p).mappings().one())
    by_status = {r["status"]: {k: r[k] for k in ("responses", "total_tokens", "cost_usd")}
                 for r in conn.execute(RESPONSES_BY_STATUS, p).mappings()}
    return {**_scope(conn, tag, key_hash), "columns": cols, "rows": rows, "count": totals["responses"],
            "totals": totals, "by_status": by_status}


def join_check(conn: Connection, tag: str, expected: int | None, key_hash: str | None = None) -> dict[str, Any]:
    m = dict(conn.execute(JOIN_CHECK, {"tag": tag, "key_hash": key_hash}).mappings().one())
    base = max(expected or 0, m["request_rows"], m["response_rows"])
    integrity = round(100.0 * m["matched_pairs"] / base, 2) if base else 0.0
    out: dict[str, Any] = {**_scope(conn, tag, key_hash), "expected_calls": expected, **m,
                           "integrity_pct": integrity}
    for k in ("delay_p50_ms", "delay_p99_ms", "delay_max_ms"):
        out[k] = None if out[k] is None else round(float(out[k]), 1)
    return out
