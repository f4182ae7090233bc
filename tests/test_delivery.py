"""The delivery policy on its own (no database): retry on connection errors, bisect refused
rows, nothing lost, nothing tried after the database went away."""

import psycopg2
import pytest

from litellm_pglog.delivery import Delivery


class FakeTable:
    """insert(rows) like insert.insert_batch: refuses a batch holding a row marked bad (as a
    data error would), fails with a connection error while `down` (a number of calls or True)."""

    def __init__(self, down=0):
        self.down = down
        self.rows = {}
        self.calls = 0

    def insert(self, rows):
        self.calls += 1
        if self.down is True or self.down > 0:
            if self.down is not True:
                self.down -= 1
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        if any(r.get("bad") for r in rows):
            raise psycopg2.errors.InvalidTextRepresentation("invalid input syntax for type json")
        written, dups = 0, []
        for r in rows:
            if r["call_id"] in self.rows:
                dups.append(r["call_id"])
            else:
                self.rows[r["call_id"]] = r
                written += 1
        return written, dups


def batch(n, bad=()):
    return [{"call_id": f"c{i}", "bad": i in bad} for i in range(n)]


def no_sleep(_):
    pass


def test_all_good_rows_go_in_one_statement():
    table = FakeTable()
    out = Delivery(table.insert, sleep=no_sleep).deliver(batch(100))
    assert (out.written, out.duplicates, out.rejected, out.undelivered) == (100, [], [], [])
    assert table.calls == 1


@pytest.mark.parametrize("bad", [(0,), (57,), (99,), (3, 4, 90)])
def test_bisect_isolates_exactly_the_refused_rows(bad):
    table = FakeTable()
    out = Delivery(table.insert, sleep=no_sleep).deliver(batch(100, bad))
    assert sorted(r["call_id"] for r, _ in out.rejected) == [f"c{i}" for i in bad]
    assert all("invalid input syntax" in err for _, err in out.rejected)
    assert out.written == 100 - len(bad) and not out.undelivered
    assert len(table.rows) == 100 - len(bad)
    if len(bad) == 1:
        assert table.calls <= 2 * 7 + 1  # ~2*log2(n) statements, not n


def test_connection_error_is_retried_then_succeeds():
    table, slept = FakeTable(down=2), []
    out = Delivery(table.insert, sleep=slept.append).deliver(batch(10))
    assert out.written == 10 and not out.undelivered and out.error is None
    assert slept == [0.1, 0.3]


def test_database_away_returns_every_row_undelivered():
    table = FakeTable(down=True)
    rows = batch(10)
    out = Delivery(table.insert, sleep=no_sleep).deliver(rows)
    assert out.undelivered == rows and out.written == 0 and not out.rejected
    assert isinstance(out.error, psycopg2.OperationalError)
    assert table.calls == 3  # first try + two retries


def test_database_lost_during_bisect_stops_trying_and_loses_nothing():
    class GoesAway(FakeTable):
        def insert(self, rows):
            if self.calls >= 2:  # the batch failed as data, the first half failed as data, then away
                self.down = True
            return super().insert(rows)

    table = GoesAway()
    rows = batch(16, bad=(1,))
    out = Delivery(table.insert, sleep=no_sleep).deliver(rows)
    accounted = [r["call_id"] for r in out.undelivered] + [r["call_id"] for r, _ in out.rejected] + list(table.rows)
    assert sorted(accounted) == sorted(r["call_id"] for r in rows)
    assert out.undelivered and out.error is not None
    assert table.calls <= 2 + 3  # after the retries of the first failure nothing more was tried


def test_duplicates_are_reported_not_written():
    table = FakeTable()
    d = Delivery(table.insert, sleep=no_sleep)
    d.deliver(batch(5))
    out = d.deliver(batch(8))
    assert out.written == 3 and out.duplicates == ["c0", "c1", "c2", "c3", "c4"]


def test_an_unexpected_exception_is_isolated_like_a_refused_row():
    """A bug or an unencodable value (not a database error) must not take the batch down."""
    def insert(rows):
        if any(r["call_id"] == "c2" for r in rows):
            raise TypeError("Integer exceeds 64-bit range")
        return len(rows), []

    out = Delivery(insert, sleep=no_sleep).deliver(batch(6))
    assert [r["call_id"] for r, _ in out.rejected] == ["c2"] and out.written == 5


def test_a_read_only_session_is_retried_and_kept_never_bisected_or_rejected():
    """25006 read_only_sql_transaction: the connection reached a standby or a demoted primary.
    The rows are fine: retried like a lost connection, then handed back undelivered (spooled);
    bisecting them would put every one of them in the rejected file."""
    calls = []

    def insert(rows):
        calls.append(len(rows))
        raise psycopg2.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")

    rows = batch(16)
    out = Delivery(insert, sleep=no_sleep).deliver(rows)
    assert out.undelivered == rows and not out.rejected and out.written == 0
    assert isinstance(out.error, psycopg2.errors.ReadOnlySqlTransaction)
    assert calls == [16, 16, 16]  # first try + two retries, all whole: no bisect


def test_read_only_is_a_connection_error_wrapped_or_not():
    import sqlalchemy.exc

    from litellm_pglog.dberrors import is_connection_error

    ro = psycopg2.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert is_connection_error(ro)
    assert is_connection_error(sqlalchemy.exc.InternalError("INSERT ...", {}, ro))
    assert not is_connection_error(psycopg2.errors.InvalidTextRepresentation("bad json"))
    assert not is_connection_error(psycopg2.errors.UniqueViolation("duplicate key"))
