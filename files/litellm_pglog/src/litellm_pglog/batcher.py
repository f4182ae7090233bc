"""The hand-off from the event loop to the writer: one queue, taken out in batches.

Producer (the callback, on the proxy's event loop): put() -- a SimpleQueue.put, no lock taken
  in Python, no I/O; refused (False) when the queue already holds `limit` records.
Consumer (the collector thread): next_batch() -- at most `batch_size` records, handed over at
  most `flush_s` after the first of them arrived.

Why the collector does not wait record by record: each time a writer thread wakes up it must
take the GIL from the busy event loop, and every such switch delays the loop (by up to the 5 ms
switch interval, more when the cores are saturated). So the collector sleeps until a first
record arrives, then until the flush deadline -- or until the queue holds a full batch, which
the producer signals once per batch (an Event), not once per record: two wake-ups per batch
instead of one per record.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

STOP = object()  # end of input: put by close()


class Batcher:
    def __init__(self, batch_size: int, flush_s: float, limit: int) -> None:
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.limit = limit
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._full = threading.Event()  # set by the producer when a whole batch is waiting
        self._closed = False

    # ---- producer (event loop) -------------------------------------------------------------
    def put(self, record: Any) -> bool:
        depth = self._queue.qsize()
        if depth >= self.limit:
            return False
        self._queue.put(record)
        if depth + 1 >= self.batch_size and not self._full.is_set():
            self._full.set()
        return True

    def depth(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """No more input: the collector hands over what it holds now, without the flush wait."""
        self._closed = True
        self._queue.put(STOP)
        self._full.set()

    # ---- consumer (collector thread) -------------------------------------------------------
    def next_batch(self, idle_s: float = 1.0) -> tuple[list[Any], bool]:
        """(records, closed). Waits up to idle_s for a first record ([] if none came)."""
        try:
            first = self._queue.get(timeout=idle_s)
        except queue.Empty:
            return [], False
        if first is STOP:
            return [], True
        deadline = time.monotonic() + self.flush_s
        while not self._closed and self._queue.qsize() + 1 < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._full.wait(remaining):
                break
        self._full.clear()
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is STOP:
                return batch, True
            batch.append(record)
        if self._queue.qsize() >= self.batch_size:
            self._full.set()  # a burst: the next batch is already complete, do not wait for it
        return batch, False

    def drain(self) -> list[Any]:
        """Everything queued right now, without blocking (the end markers left out)."""
        records = []
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                return records
            if record is not STOP:
                records.append(record)
