"""The COPY fast path (copyload.py) against the real cluster: it stores exactly what the
one-statement path stores, its timestamps are to_timestamp's to the microsecond (the dedupe key
holds created_at), replays of COPY-written records are duplicates, and a bad row or a stored
record makes it fall back without leaving anything behind."""

import datetime as dt
import random

import psycopg2
import pytest

from conftest import query
from helpers import make_slo
from litellm_pglog import copyload, insert, records
from litellm_pglog.config import Settings
from litellm_pglog.delivery import Delivery
from litellm_pglog.engine import make_engine

ALL_PATHS = 10 ** 9  # copyload.MIN_ROWS that keeps every batch on the statement path


@pytest.fixture
def engine(writer_env):
    e = make_engine(Settings.from_env(), log_connect=False)
    yield e
    e.dispose()


@pytest.fixture
def copies(monkeypatch):
    """Every batch tries COPY first; returns the list of batch sizes COPY wrote."""
    written = []
    real = copyload.copy_batch

    def spy(dbapi, rows):
        real(dbapi, rows)
        written.append(len(rows))

    monkeypatch.setattr(copyload, "MIN_ROWS", 1)
    monkeypatch.setattr(copyload, "copy_batch", spy)
    return written


def varied_rows(n=120):
    """Rows with every kind of value COPY must carry: NULLs, empty strings, quotes, backslashes,
    tabs, newlines, NUL, non-ASCII, non-finite numbers, failures, streams with a first chunk."""
    out = []
    for i in range(n):
        odd = i % 7
        slo = make_slo(
            i, call_id=f"c\\{i}\t\n\r" if odd == 1 else None,
            content=["plain", "back\\slash \\N \\.", "tab\tnl\ncr\r", "ünï 日本 🚀 \x00", "'; DROP --", '"q",\n\\.'][i % 6],
            end_user=None if odd == 0 else f"user\\{i}\t",
            status="failure" if odd == 3 else "success",
            response_cost=[float("nan"), float("inf"), 0.1 + i, 1e-9][i % 4] if odd in (2, 4) else 0.000001 * i,
            stream=odd == 5, request_tags=["run:test", f"t\\{i}"],
        )
        if odd == 5:
            slo["completionStartTime"] = slo["startTime"] + 0.001 * i
        slo["startTime"] += random.random() / 3  # fractional microseconds of every kind
        row = records.prepare(records.capture(slo), 4096)
        if odd == 6:  # empty strings: not NULL
            row.update(model="", call_type="", call_id="")
        out.append(row)
    return out


STORED = """SELECT q.event_id, q.call_id, q.created_at, q.model, q.call_type, q.stream, q.api_key_hash,
                   q.end_user, q.tags, q.payload, r.request_created_at, r.created_at, r.status,
                   r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd::text, r.latency_ms,
                   r.ttft_ms, r.body, r.request_id = q.id
            FROM requests q JOIN responses r ON r.request_id = q.id AND r.request_created_at = q.created_at
            ORDER BY q.event_id"""


def test_copy_stores_exactly_what_the_statement_stores(engine, clean_db, copies, monkeypatch):
    rows = varied_rows()
    assert insert.insert_batch(engine, rows) == (len(rows), [])
    assert copies == [len(rows)]  # COPY wrote them, no fallback
    by_copy = query(clean_db, STORED)
    query(clean_db, "TRUNCATE requests, responses")
    monkeypatch.setattr(copyload, "MIN_ROWS", ALL_PATHS)
    assert insert.insert_batch(engine, rows) == (len(rows), [])
    assert copies == [len(rows)]  # the statement this time
    by_statement = query(clean_db, STORED)
    assert len(by_copy) == len(rows)
    assert by_copy == by_statement


def test_timestamps_equal_to_timestamp_to_the_microsecond(clean_db):
    rng = random.Random(7)
    now = 1_790_000_000.0
    xs = [now + rng.uniform(-400 * 86400, 400 * 86400) for _ in range(20000)]
    xs += [now + k + h * 1e-6 for k in range(200) for h in (0.5, 1.5, 2.5, 0.4999999, 0.5000001)]  # halves
    xs += [0.0, 946684800.0, 946684799.9999995, 253402300799.0, -62135596800.0]
    ours = [copyload.timestamp_text(x) for x in xs]
    bad = query(clean_db, "SELECT x, s FROM unnest(%s::float8[], %s::timestamptz[]) AS t(x, s)"
                          " WHERE to_timestamp(x) IS DISTINCT FROM s", (xs, ours))
    assert bad == []
    # the test can tell: Python's own conversion rounds differently for some of these values
    naive = [dt.datetime.fromtimestamp(x, dt.timezone.utc).isoformat() for x in xs]
    assert query(clean_db, "SELECT count(*) FROM unnest(%s::float8[], %s::timestamptz[]) AS t(x, s)"
                           " WHERE to_timestamp(x) IS DISTINCT FROM s", (xs, naive))[0][0] > 0


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e300])
def test_timestamps_copy_cannot_carry_raise(value):
    with pytest.raises((ValueError, OverflowError)):
        copyload.timestamp_text(value)


def test_replays_of_copied_records_are_duplicates_on_both_paths(engine, clean_db, copies, monkeypatch):
    rows = varied_rows(100)
    keys = sorted(r["event_id"] for r in rows)
    assert insert.insert_batch(engine, rows) == (100, [])
    assert copies == [100]
    # the statement's ON CONFLICT matches them: same created_at to the microsecond
    monkeypatch.setattr(copyload, "MIN_ROWS", ALL_PATHS)
    written, dups = insert.insert_batch(engine, rows)
    assert (written, sorted(dups)) == (0, keys)
    # COPY first: the unique key refuses the batch, nothing of it stays, the statement counts
    monkeypatch.setattr(copyload, "MIN_ROWS", 1)
    written, dups = insert.insert_batch(engine, rows[:50] + varied_rows(30))
    assert (written, sorted(dups)) == (30, sorted(r["event_id"] for r in rows[:50]))
    assert copies == [100]  # the mixed batch went through the statement
    assert query(clean_db, "SELECT count(*), count(DISTINCT event_id) FROM requests") == [(130, 130)]
    assert query(clean_db, "SELECT count(*) FROM responses") == [(130,)]


def test_a_bad_row_in_a_copy_batch_is_isolated_and_nothing_is_lost(engine, clean_db, copies):
    rows = varied_rows(100)
    rows[37] = dict(rows[37], prompt_tokens=2 ** 40)  # INTEGER out of range: COPY and statement refuse it
    rows[80] = dict(rows[80], created_at=float("nan"))  # COPY's text form cannot carry it
    outcome = Delivery(lambda batch: insert.insert_batch(engine, batch), sleep=lambda _: None).deliver(rows)
    assert outcome.written == 98 and outcome.undelivered == [] and outcome.duplicates == []
    assert sorted(r["event_id"] for r, _ in outcome.rejected) == sorted([rows[37]["event_id"], rows[80]["event_id"]])
    errors = {r["event_id"]: err for r, err in outcome.rejected}  # the statement's own errors
    assert "out of range" in errors[rows[37]["event_id"]]
    assert "NaN" in errors[rows[80]["event_id"]]
    assert query(clean_db, "SELECT count(*) FROM requests") == [(98,)]
    assert query(clean_db, "SELECT count(*) FROM responses") == [(98,)]
    assert sum(copies) > 0  # the good halves went in by COPY


def test_a_connection_error_during_copy_is_raised_not_retried_as_a_statement(engine, clean_db, monkeypatch):
    calls = []

    def lost(dbapi, rows):
        calls.append(len(rows))
        raise psycopg2.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(copyload, "MIN_ROWS", 1)
    monkeypatch.setattr(copyload, "copy_batch", lost)
    with pytest.raises(psycopg2.OperationalError):
        insert.insert_batch(engine, varied_rows(5))
    assert calls == [5]
    assert query(clean_db, "SELECT count(*) FROM requests") == [(0,)]


def test_small_batches_skip_copy(engine, clean_db, copies, monkeypatch):
    monkeypatch.setattr(copyload, "MIN_ROWS", 64)
    assert insert.insert_batch(engine, varied_rows(63))[0] == 63
    assert insert.insert_batch(engine, varied_rows(64))[0] == 64
    assert copies == [64]


def test_ids_come_from_the_requests_sequence(engine, clean_db, copies):
    insert.insert_batch(engine, varied_rows(70))
    ids = [i for (i,) in query(clean_db, "SELECT id FROM requests ORDER BY id")]
    assert len(set(ids)) == 70
    nxt = query(clean_db, "SELECT nextval(pg_get_serial_sequence('requests', 'id'))")[0][0]
    assert nxt > max(ids)


def test_an_empty_end_user_stays_an_empty_string(engine, clean_db, copies):
    rows = varied_rows(80)
    rows[11] = dict(rows[11], end_user="")
    assert insert.insert_batch(engine, rows) == (80, [])
    assert copies == [80]
    assert query(clean_db, "SELECT end_user FROM requests WHERE event_id = %s", (rows[11]["event_id"],)) == [("",)]


def test_none_in_a_not_null_column_gets_the_statements_error(engine, clean_db, copies):
    """str(None) would store the text 'None': the row is refused before COPY sends anything."""
    rows = varied_rows(80)
    rows[11] = dict(rows[11], model=None)
    outcome = Delivery(lambda batch: insert.insert_batch(engine, batch), sleep=lambda _: None).deliver(rows)
    assert [r["event_id"] for r, _ in outcome.rejected] == [rows[11]["event_id"]]
    assert "null value" in outcome.rejected[0][1]
    assert query(clean_db, "SELECT count(*), count(*) FILTER (WHERE model = 'None') FROM requests") == [(79, 0)]
    assert 0 < sum(copies) < 80  # the halves without that row went in by COPY
