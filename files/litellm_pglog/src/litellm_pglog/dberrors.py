"""Which database errors mean "the database is away" -- decided here and nowhere else.

Two kinds of failure need opposite handling:
  connection-level (server down, network cut, connection killed, timeout, disk full, ...):
      the records are fine; keep them (spool) and try again later. A session that cannot write
      (25006 read_only_sql_transaction: the connection reached a standby, or a primary demoted
      in a switchover) is one of these: the rows are fine, the node is the wrong one; the
      connection is thrown away (insert.py) and the next one goes through the host list
      (target_session_attrs=read-write) to the primary, wherever it is now;
  data-level (a value PostgreSQL refuses, a constraint, a bug in a record):
      retrying cannot help; isolate the record and set it aside (the rejected file).

psycopg2 puts the first kind under OperationalError/InterfaceError (25006 is an InternalError,
hence named here); SQLAlchemy wraps DBAPI errors and keeps the original in `.orig`, and flags a
connection it had to throw away.
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors


class DatabaseUnreachable(RuntimeError):
    """The database could not be asked (raised where a plain DBAPI error would be ambiguous)."""


CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError, DatabaseUnreachable,
                     psycopg2.errors.ReadOnlySqlTransaction)


def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, CONNECTION_ERRORS) or isinstance(getattr(exc, "orig", None), CONNECTION_ERRORS):
        return True
    return bool(getattr(exc, "connection_invalidated", False))


def is_read_only(exc: BaseException) -> bool:
    """The server refused to write because the session is read-only (a standby, a demoted
    primary, or default_transaction_read_only)."""
    return isinstance(exc, psycopg2.errors.ReadOnlySqlTransaction) or isinstance(
        getattr(exc, "orig", None), psycopg2.errors.ReadOnlySqlTransaction)


def short(exc: BaseException) -> str:
    """`ClassName: first line of the message`, at most 300 characters: for log lines."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"[:300]
