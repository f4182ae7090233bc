"""The hand-off queue: size and time bounds, the limit, close(), and few wake-ups."""

import threading
import time

from litellm_pglog.batcher import Batcher


def test_full_batch_is_handed_over_at_once_without_waiting_for_the_flush():
    b = Batcher(batch_size=100, flush_s=5.0, limit=10_000)
    for i in range(250):
        assert b.put(i)
    t0 = time.monotonic()
    first, closed = b.next_batch()
    second, _ = b.next_batch()
    assert first == list(range(100)) and second == list(range(100, 200)) and not closed
    assert time.monotonic() - t0 < 2.0  # far below the 5 s flush


def test_partial_batch_waits_for_the_flush_deadline():
    b = Batcher(batch_size=100, flush_s=0.3, limit=10_000)
    b.put("x")
    t0 = time.monotonic()
    batch, _ = b.next_batch()
    assert batch == ["x"] and 0.25 <= time.monotonic() - t0 < 2.0


def test_batch_filling_up_during_the_wait_is_handed_over_early():
    b = Batcher(batch_size=50, flush_s=10.0, limit=10_000)
    b.put(0)

    def producer():
        time.sleep(0.2)
        for i in range(1, 60):
            b.put(i)

    threading.Thread(target=producer).start()
    t0 = time.monotonic()
    batch, _ = b.next_batch()
    assert batch == list(range(50)) and time.monotonic() - t0 < 2.0


def test_limit_refuses_records():
    b = Batcher(batch_size=10, flush_s=0.1, limit=3)
    assert [b.put(i) for i in range(5)] == [True, True, True, False, False]
    assert b.depth() == 3


def test_close_hands_over_what_is_left_without_the_flush_wait():
    b = Batcher(batch_size=100, flush_s=30.0, limit=10_000)
    for i in range(5):
        b.put(i)
    threading.Timer(0.1, b.close).start()
    t0 = time.monotonic()
    batch, closed = b.next_batch()
    assert batch == list(range(5)) and closed and time.monotonic() - t0 < 2.0


def test_one_wakeup_per_batch_not_per_record():
    """The reason the batcher exists: a trickle of records (the proxy at tens of calls per
    second) must not wake the collector once per record; each wake-up costs the event loop a
    GIL switch. Counted by wrapping the queue's get: blocking gets are wake-ups."""
    b = Batcher(batch_size=500, flush_s=0.25, limit=10_000)
    blocking_gets = []

    class CountingQueue:
        def __init__(self, q):
            self.q = q
            self.put, self.get_nowait, self.qsize = q.put, q.get_nowait, q.qsize

        def get(self, block=True, timeout=None):
            blocking_gets.append(timeout)
            return self.q.get(block, timeout)

    b._queue = CountingQueue(b._queue)
    got, batches = [], []

    def collector():
        while len(got) < 40:
            batch, _ = b.next_batch(idle_s=2.0)
            got.extend(batch)
            if batch:
                batches.append(len(batch))

    t = threading.Thread(target=collector)
    t.start()
    for i in range(40):  # ~80 records/s for 0.5 s
        b.put(i)
        time.sleep(0.0125)
    t.join(5)
    assert got == list(range(40))
    assert len(batches) <= 10, batches  # ~2-3 batches of a 0.5 s trickle (more only on a stalled host)
    assert len(blocking_gets) <= len(batches) + 1, blocking_gets  # one blocking wait per batch, not per record
