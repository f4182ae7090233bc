"""The COPY fast path: a batch of new records -> both tables with COPY, in one transaction.

    SELECT nextval(<requests' id sequence>) FROM generate_series(1, n)   -- the requests' ids
    COPY requests (id, created_at, event_id, call_id, ...) FROM STDIN (FORMAT csv, ...)
    COPY responses (request_id, request_created_at, created_at, ...) FROM STDIN (FORMAT csv, ...)
    COMMIT

Why: at full batches the one-statement path (insert.py) costs the server about twice what
COPY does (jsonb_to_recordset, ON CONFLICT's speculative insertion, the join that maps each
response to its request's id), measured by bench/writer_throughput.py. The writer's one thread
waits for that, so it bounds throughput.

What COPY cannot do is skip a record that is already stored. So this path is only the first
try: any data-level error -- above all a unique violation of (created_at, event_id), a replay
of a record already stored -- rolls the transaction back (nothing of the batch stays) and the
caller (insert.insert_batch) sends the same rows through the one-statement path, which counts
duplicates and reports the database's own error for a bad row, as before.

How a row becomes a line of COPY's text format, cheaply: the batch's Python cost is what the
writer thread adds to the proxy's interpreter. A first encoder converted and escaped field by
field (16 us a row, four times the statement's orjson document, eating what COPY saved the
server); the csv module was slower still on ~1 KB JSON payloads full of quotes (23 us). Now the
NOT NULL fields of a row are str()-ed and joined with NUL by C code, the joined text is escaped
once (backslash, newline, carriage return, tab: four C-level replaces, each only when needed)
and the NULs become tabs. NUL is free as the separator: PostgreSQL text cannot hold it, so no
value that could be stored contains it -- and if one did, the line would have a column too
many and COPY would refuse the batch (never a silent shift). str() gives what the types' input
functions read (True, 3, 1e-06, nan, inf). None in a NOT NULL column would come out as "None":
such a row is refused before anything is sent (ValueError), and the statement path stores or
rejects it as it always did. The nullable columns (end user, first-token time) are converted
one by one, None as COPY's NULL marker.

Timestamps: the dedupe key holds created_at, so a record must get the very same timestamptz
whichever path writes it. The statement path sends epoch seconds to to_timestamp(float8);
`timestamp_text` computes what that function computes (see there), so a COPY-written record
replayed later through the statement is a duplicate, not a second row (tested).
"""

from __future__ import annotations

import datetime as dt
import io
from operator import itemgetter
from typing import Any, Callable

from sqlalchemy import DateTime

from .models import REQUEST_COLUMNS, RESPONSE_COLUMNS, Request, Response

# Below this many rows the one-statement path is used straight away: COPY needs four round
# trips (ids, two COPYs, COMMIT) where the statement needs one, which only pays off when the
# server's work per row dominates -- a backlog, not a trickle of calls.
MIN_ROWS = 64

_EPOCH_2000 = dt.datetime(2000, 1, 1)  # naive: UTC, the offset is added as text
_UNIX_TO_2000_S = 946684800.0  # (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY


def timestamp_text(epoch_s: float) -> str:
    """The timestamptz that PostgreSQL's to_timestamp(epoch_s) gives, as text.

    float8_timestamptz (src/backend/utils/adt/timestamp.c) computes, in float8:
    rint((epoch_s - 946684800) * 1000000) microseconds since 2000-01-01 UTC. The same float64
    operations in the same order give the same double here, and round() rounds half to even
    like rint(). Raises (ValueError, OverflowError, TypeError) for NaN, infinities, None and
    years outside 1..9999: the caller then leaves the batch to the statement path."""
    seconds, us = divmod(round((float(epoch_s) - _UNIX_TO_2000_S) * 1e6), 1_000_000)
    head = _SECONDS.get(seconds)
    if head is None:  # a batch's records share their seconds: the date is made once a second
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        head = _SECONDS[seconds] = (_EPOCH_2000 + dt.timedelta(seconds=seconds)).isoformat(" ")
    return f"{head}.{us:06d}+00"


_SECONDS: dict[int, str] = {}  # seconds since 2000 -> 'YYYY-MM-DD HH:MM:SS' (UTC)


def _getter(names: list[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """row -> the values of names, always a tuple (itemgetter of one name gives the value)."""
    if len(names) > 1:
        return itemgetter(*names)
    if names:
        name = names[0]
        return lambda row: (row[name],)
    return lambda row: ()


def _escape(text: str) -> str:
    """COPY text format: backslash first, then the three characters that would end a field or line."""
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    if "\t" in text:
        text = text.replace("\t", "\\t")
    return text


class _Table:
    """One table's COPY: which columns, in which order, and how a prepared row gives its line.

    Order: the leading columns the caller supplies (ids, the request's timestamp), the other
    timestamps, the NOT NULL columns, the nullable ones."""

    def __init__(self, table: Any, columns: tuple[str, ...], lead: tuple[str, ...], field: dict[str, str]) -> None:
        own = [c for c in columns if c not in lead]
        stamps = [c for c in own if isinstance(table.c[c].type, DateTime)]
        required = [c for c in own if c not in stamps and not table.c[c].nullable]
        optional = [c for c in own if c not in stamps and table.c[c].nullable]
        self.stamps = [field.get(c, c) for c in stamps]
        self.required = _getter([field.get(c, c) for c in required])
        self.optional = [field.get(c, c) for c in optional]
        self.statement = f"COPY {table.name} ({', '.join([*lead, *stamps, *required, *optional])}) FROM STDIN"

    def line(self, lead: str, row: dict[str, Any]) -> str:
        """lead (the leading fields, tab-separated) + this row's fields, one line. ValueError
        for None in a NOT NULL column, ValueError/OverflowError/TypeError for a timestamp
        to_timestamp would refuse."""
        required = self.required(row)
        if None in required:
            raise ValueError("NULL in a NOT NULL column: left to the statement path")
        parts = [lead]
        parts += [timestamp_text(row[name]) for name in self.stamps]
        parts.append(_escape("\0".join(map(str, required))).replace("\0", "\t"))
        parts += ["\\N" if (v := row.get(name)) is None else _escape(str(v)) for name in self.optional]
        return "\t".join(parts) + "\n"


_REQUESTS = _Table(Request.__table__, REQUEST_COLUMNS, ("id", "created_at"), {})
# responses columns that come from the request row; the prepared-row field of a responses
# column where the names differ (as in insert.py)
_RESPONSES = _Table(Response.__table__, RESPONSE_COLUMNS, ("request_id", "request_created_at"), {"created_at": "ended_at"})

# the sequence is looked up once per statement (OFFSET 0 keeps the subquery from being folded
# into the per-row call): pg_get_serial_sequence per row cost 5-8 us of server time a row
NEXT_IDS = ("SELECT nextval(q.seq) FROM (SELECT pg_get_serial_sequence('requests', 'id')::regclass AS seq OFFSET 0) q,"
            " generate_series(1, %s)")


def copy_batch(dbapi: Any, rows: list[dict[str, Any]]) -> None:
    """Write rows (no two with the same key) with COPY in one transaction on a psycopg2
    connection not in autocommit. Raises ValueError/TypeError/OverflowError for a row the text
    form cannot carry as the statement would store it (before anything is sent), else whatever
    the database says; the caller rolls back."""
    created = [timestamp_text(row["created_at"]) for row in rows]
    cur = dbapi.cursor()
    try:
        cur.execute(NEXT_IDS, (len(rows),))
        ids = [i for (i,) in cur.fetchall()]
        leads = [f"{i}\t{c}" for i, c in zip(ids, created)]
        # encoded before the first COPY: a string UTF-8 cannot carry fails here, not mid-COPY
        requests = "".join([_REQUESTS.line(lead, row) for lead, row in zip(leads, rows)]).encode("utf-8")
        responses = "".join([_RESPONSES.line(lead, row) for lead, row in zip(leads, rows)]).encode("utf-8")
        cur.copy_expert(_REQUESTS.statement, io.BytesIO(requests))
        cur.copy_expert(_RESPONSES.statement, io.BytesIO(responses))
        dbapi.commit()
    finally:
        cur.close()
