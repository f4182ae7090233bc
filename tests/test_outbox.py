"""The outbox without a database: spool first, memory when the spool is full, counted drops,
and a replay cut short keeping exactly the rows still to deliver, in their place."""

import json
import os

from litellm_pglog.outbox import Outbox
from litellm_pglog.spool import Spool
from litellm_pglog.stats import COUNTERS


def rows(a, b):
    return [{"call_id": f"c{i}", "payload": "x" * 100} for i in range(a, b)]


def outbox(tmp_path, spool_mb=16, memory=1000):
    return Outbox(Spool(str(tmp_path / "spool"), spool_mb), memory, dict.fromkeys(COUNTERS, 0))


def test_backlog_is_oldest_first_and_done_removes(tmp_path):
    box = outbox(tmp_path)
    box.keep(rows(0, 3))
    box.keep(rows(3, 5))
    seen = []
    for pending in box.backlog():
        seen.extend(r["call_id"] for r in pending.rows)
        pending.done()
    assert seen == [f"c{i}" for i in range(5)]
    assert box.spool.segments() == [] and box.counters["spooled"] == 5


def test_replay_cut_short_keeps_only_the_rest_in_the_same_segment(tmp_path):
    box = outbox(tmp_path)
    box.keep(rows(0, 10))
    box.keep(rows(10, 12))
    names = box.spool.segments()
    for pending in box.backlog():
        pending.keep(pending.rows[6:])  # rows 0-5 went in, then the database went away
        break
    assert box.spool.segments() == names  # same names: the order is kept
    left = [json.loads(l)["call_id"] for l in open(os.path.join(box.spool.directory, names[0]))]
    assert left == [f"c{i}" for i in range(6, 10)]
    assert not [n for n in os.listdir(box.spool.directory) if n.endswith(".tmp")]


def test_spool_full_goes_to_memory_then_drops_counted(tmp_path):
    box = outbox(tmp_path, spool_mb=1, memory=30)
    big = [{"call_id": f"b{i}", "payload": "y" * 50_000} for i in range(40)]
    for i in range(0, 40, 10):
        box.keep(big[i:i + 10])
    c = box.counters
    assert c["spooled"] == 20 and c["spool_full"] == 20 and c["dropped"] == 0  # ~1 MB spool, then memory
    box.keep(big[:20])  # memory holds 20 of 30: these do not fit
    assert c["dropped"] == 20
    replayed = []
    for pending in box.backlog():
        replayed.extend(r["call_id"] for r in pending.rows)
        pending.done()
    assert replayed == [f"b{i}" for i in range(40)] and box.memory_records == 0
