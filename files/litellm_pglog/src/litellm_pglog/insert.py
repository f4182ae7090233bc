"""One batch of prepared rows (records.prepare) -> ONE statement that fills both tables.

Rendered for today's schema, the statement reads (it is built from models.py, so it follows
the columns; `print(insert.STATEMENT)` shows the real one):

    WITH batch AS (                -- the whole batch is ONE parameter: a JSON array of rows
        SELECT * FROM jsonb_to_recordset(%s::jsonb)
                   AS b(event_id uuid, call_id text, created_at float8, ..., ended_at float8, ..., body jsonb)),
    req AS (
        INSERT INTO requests (event_id, call_id, created_at, ...)
        SELECT event_id, call_id, to_timestamp(created_at), ... FROM batch
        ON CONFLICT (created_at, event_id) DO NOTHING  -- a record already stored: the first one wins
        RETURNING id, created_at, event_id),
    resp AS (
        INSERT INTO responses (request_id, request_created_at, created_at, ...)
        SELECT req.id, req.created_at, to_timestamp(b.ended_at), ... FROM req JOIN batch b USING (event_id))
    SELECT b.event_id FROM batch b            -- the records that were already there: duplicates
    WHERE NOT EXISTS (SELECT 1 FROM req WHERE req.event_id = b.event_id)

Why this shape (measured with bench/writer_throughput.py; numbers in the notes of the change):
- a response needs its request's id: joining on the dedupe key inside the statement maps them,
  so no ids travel to Python and back and one round trip does both tables;
- the rows go as one JSON document made by orjson (C code) instead of a VALUES list formatted
  row by row in Python: about 5x less Python CPU per row, and this Python runs in the proxy's
  process, where it competes with the event loop for the GIL. Payload, tags and body are JSON
  text already and are embedded as they are (orjson.Fragment), not escaped a second time;
- jsonb_to_recordset, not json_to_recordset: the document is parsed once, and payload/body
  come out of it as jsonb without a second parse (~10 % less server CPU per row);
- the statement runs in autocommit (it is atomic by itself): no BEGIN/COMMIT round trips;
- ON CONFLICT keeps replays idempotent; no staging table, because the writer role has no
  TEMPORARY privilege on the database (and no DDL).

Full batches (copyload.MIN_ROWS or more rows, i.e. a busy gateway or a spool replay) first try
plain COPY into both tables (copyload.py), which costs the server about half as much per row:
with it the writer reaches 0.95-0.98 of a raw COPY of the same rows, against 0.68 with this
statement alone (bench/writer_throughput.py, docs/FINDINGS.md). COPY cannot skip a record that
is already stored, so any refusal rolls it back whole and the batch comes here, to this
statement, which decides duplicates and errors as it always did.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from sqlalchemy import Boolean, DateTime, Double, Engine, Integer, Numeric, String
from sqlalchemy.dialects.postgresql import JSONB, UUID

from . import copyload, records
from .dberrors import is_connection_error
from .models import REQUEST_COLUMNS, RESPONSE_COLUMNS, Request, Response

# The dedupe key: the logger's own id of a record (records.capture gives every callback event
# one at hand-off, never the caller), and the unique constraint that holds it together with
# the record's fixed time (a partitioned table needs the partition key in every unique key).
# Every statement and every duplicate count uses these names.
DEDUPE_KEY = "event_id"
CONFLICT_TARGET = ("created_at", "event_id")

# responses columns filled from the request row the statement just inserted (responses column ->
# requests column): the request's id and its partition key, the response's partition key.
FROM_REQUEST = {"request_id": "id", "request_created_at": "created_at"}

# Prepared-row field for a responses column, where the names differ (both tables have a
# created_at: the request's is the call's start, the response's is the call's end).
RESPONSE_FIELD = {"created_at": "ended_at"}


def _sql_type(column: Any) -> str:
    """The type a field has inside the JSON batch. Timestamps travel as epoch seconds."""
    t = column.type
    if isinstance(t, UUID):
        return "uuid"
    if isinstance(t, DateTime):
        return "float8"
    if isinstance(t, JSONB):
        return "jsonb"
    if isinstance(t, String):
        return "text"  # the column's own length limit applies on INSERT
    if isinstance(t, Boolean):
        return "boolean"
    if isinstance(t, Double):
        return "float8"
    if isinstance(t, Numeric):
        return "numeric"  # the column's precision/scale apply on INSERT
    if isinstance(t, Integer):
        return "bigint"
    raise TypeError(f"no JSON batch type for {column.table.name}.{column.name} ({t!r})")


def _value(column: Any, field: str, prefix: str = "") -> str:
    expr = prefix + field
    return f"to_timestamp({expr})" if isinstance(column.type, DateTime) else expr


def _build() -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    req_cols = [Request.__table__.c[name] for name in REQUEST_COLUMNS]
    resp_cols = [Response.__table__.c[name] for name in RESPONSE_COLUMNS if name not in FROM_REQUEST]
    fields: dict[str, Any] = {c.name: c for c in req_cols}
    for c in resp_cols:
        fields.setdefault(RESPONSE_FIELD.get(c.name, c.name), c)
    recordset = ", ".join(f"{name} {_sql_type(col)}" for name, col in fields.items())
    key = DEDUPE_KEY
    statement = (
        f"WITH batch AS (SELECT * FROM jsonb_to_recordset(%s::jsonb) AS b({recordset})),"
        f" req AS (INSERT INTO requests ({', '.join(REQUEST_COLUMNS)})"
        f" SELECT {', '.join(_value(c, c.name) for c in req_cols)} FROM batch"
        f" ON CONFLICT ({', '.join(CONFLICT_TARGET)}) DO NOTHING RETURNING {', '.join(FROM_REQUEST.values())}, {key}),"
        f" resp AS (INSERT INTO responses ({', '.join(FROM_REQUEST)}, {', '.join(c.name for c in resp_cols)})"
        f" SELECT {', '.join('req.' + c for c in FROM_REQUEST.values())}, {', '.join(_value(c, RESPONSE_FIELD.get(c.name, c.name), 'b.') for c in resp_cols)}"
        f" FROM req JOIN batch b USING ({key}))"
        f" SELECT b.{key} FROM batch b WHERE NOT EXISTS (SELECT 1 FROM req WHERE req.{key} = b.{key})"
    )
    json_fields = tuple(n for n, c in fields.items() if isinstance(c.type, JSONB))
    float_fields = tuple(n for n, c in fields.items() if isinstance(c.type, (DateTime, Numeric)))
    return statement, json_fields, float_fields


STATEMENT, _JSON_FIELDS, _FLOAT_FIELDS = _build()

# JSON has no NaN/Infinity (orjson would write null, which NOT NULL then refuses); PostgreSQL's
# numeric and float8 read these spellings, so a NaN cost is stored as before, not rejected.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def encode(rows: list[dict[str, Any]]) -> bytes:
    """The JSON array the statement reads. Raises (TypeError, orjson.JSONEncodeError) on a row
    that cannot be encoded: the delivery policy then isolates that row like any refused one."""
    out = []
    for row in rows:
        item = dict(row)
        for name in _JSON_FIELDS:
            item[name] = orjson.Fragment(row[name])  # already JSON text (records.jsonb)
        for name in _FLOAT_FIELDS:
            v = row.get(name)  # a column newer than the row (ttft_ms, 0003) is NULL
            if isinstance(v, float) and not math.isfinite(v):
                item[name] = _NON_FINITE[repr(v)]
        out.append(item)
    return orjson.dumps(out)


def insert_batch(engine: Engine, rows: list[dict[str, Any]]) -> tuple[int, list[str]]:
    """Insert prepared rows. Returns (calls written, duplicate keys).

    A batch of copyload.MIN_ROWS or more is first tried with COPY (copyload.py: about half
    the server's work per row); if the database refuses it for any data-level reason -- a
    record already stored, a bad value -- nothing of it stays and the same rows go through
    the ONE statement above, which skips and reports duplicates and raises the database's
    own error for a bad row, exactly as if COPY had not been tried.

    A key twice in the same batch: the first row is sent, the later ones are duplicates (one
    statement cannot tell "first" apart otherwise). A key already in the table: duplicate too.
    Spool lines of an older release are brought to today's row format first (records.upgrade)."""
    rows = [records.upgrade(r) for r in rows]
    first: dict[str, dict[str, Any]] = {}
    duplicates: list[str] = []
    for row in rows:
        if first.setdefault(row[DEDUPE_KEY], row) is not row:
            duplicates.append(row[DEDUPE_KEY])
    unique = list(first.values())
    conn = engine.raw_connection()
    try:
        dbapi = conn.dbapi_connection
        if len(unique) >= copyload.MIN_ROWS and _copied(dbapi, unique):
            return len(unique), duplicates
        document = encode(unique).decode("utf-8")
        dbapi.autocommit = True  # the statement is atomic on its own; saves BEGIN and COMMIT
        try:
            cur = dbapi.cursor()
            cur.execute(STATEMENT, (document,))
            already = [str(key) for (key,) in cur.fetchall()]  # uuid as the records spell it
            cur.close()
        finally:
            if not dbapi.closed:
                dbapi.autocommit = False  # hand the pool the connection as it was given
        return len(unique) - len(already), duplicates + already
    except BaseException as exc:
        if is_connection_error(exc):
            conn.invalidate()  # the pool must not hand this connection out again
        raise
    finally:
        conn.close()


def _copied(dbapi: Any, rows: list[dict[str, Any]]) -> bool:
    """True: COPY wrote all rows. False: the database (or COPY's text form) refused something
    that is not a connection error; the transaction is rolled back, nothing of it stays.
    A connection error is raised: the delivery policy retries or spools, as for the statement."""
    try:
        copyload.copy_batch(dbapi, rows)
        return True
    except Exception as exc:
        if is_connection_error(exc):
            raise
        dbapi.rollback()
        return False
