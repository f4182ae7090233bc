"""The delivery policy -- the ONE answer to "this batch did not go in", for live batches and
for the spool replay alike: `Delivery(insert).deliver(rows) -> Outcome`.

  1. insert the whole batch (insert.insert_batch: one statement);
  2. the database is away (a connection-level error, see dberrors -- a read-only session on a
     standby or a demoted primary counts as one): try again after 0.1 s and 0.3 s -- a
     restarted server, a dead pooled connection or a failover usually answers on the next try;
     still away: the rows come back `undelivered`, and the caller keeps them (outbox) and goes
     offline. Once that happened, the rest of the batch is not even tried;
  3. the database refuses the data (any other error): some row in the batch is bad. Bisect:
     deliver each half by this same policy, until a bad row is alone; it comes back
     `rejected` with its error, every other row is written. One bad row in n costs about
     2*log2(n) statements instead of n.

deliver() never raises for a database error and never loses a row: every row it is given ends
up counted in exactly one of written/duplicates, rejected or undelivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .dberrors import is_connection_error, short

Row = dict[str, Any]
# (rows) -> (rows written, keys that were duplicates); raises on failure
InsertFn = Callable[[list[Row]], "tuple[int, list[str]]"]

RETRY_DELAYS = (0.1, 0.3)  # seconds before the 2nd and 3rd attempt on a connection error


@dataclass
class Outcome:
    written: int = 0
    duplicates: list[str] = field(default_factory=list)  # keys already stored: not written again
    rejected: list[tuple[Row, str]] = field(default_factory=list)  # (row, error) the database refused
    undelivered: list[Row] = field(default_factory=list)  # not tried or not taken: database away
    error: BaseException | None = None  # the connection error behind `undelivered`


class Delivery:
    def __init__(self, insert: InsertFn, retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._insert = insert
        self._retry_delays = retry_delays
        self._sleep = sleep

    def deliver(self, rows: list[Row]) -> Outcome:
        outcome = Outcome()
        if rows:
            self._deliver(rows, outcome)
        return outcome

    def _deliver(self, rows: list[Row], outcome: Outcome) -> None:
        if outcome.error is not None:  # the database went away earlier in this batch
            outcome.undelivered.extend(rows)
            return
        try:
            written, duplicates = self._insert_retrying(rows)
        except Exception as exc:
            if is_connection_error(exc):
                outcome.undelivered.extend(rows)
                outcome.error = exc
            elif len(rows) == 1:
                outcome.rejected.append((rows[0], short(exc)))
            else:
                middle = len(rows) // 2
                self._deliver(rows[:middle], outcome)
                self._deliver(rows[middle:], outcome)
            return
        outcome.written += written
        outcome.duplicates.extend(duplicates)

    def _insert_retrying(self, rows: list[Row]) -> tuple[int, list[str]]:
        for delay in self._retry_delays:
            try:
                return self._insert(rows)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
            self._sleep(delay)
        return self._insert(rows)
