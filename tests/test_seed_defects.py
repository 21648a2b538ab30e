"""One test per defect of the Go original (SEED-NOTES.md, "Defects of the Go code"):
each shows that busmp, in sync mode, does not have it. The three races (concurrent publishes,
concurrent subscribe and publish, a handler that publishes) are specified once, in
``test_concurrency.py``."""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections import Counter

import pytest

from busmp import (
    RETURN_ERROR,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    StoreClosed,
    exponential_backoff,
)


def counting_store(size=64, policy=None, dlq=None):
    counter, lock = Counter(), threading.Lock()
    d = Dispatcher()

    def count(ctx, ev):
        with lock:
            counter[ev.id] += 1

    d.register("p", count)
    kwargs = {"dlq": dlq}
    if policy is not None:
        kwargs["policy"] = policy
    return counter, EventStore(d, size, **kwargs)


def child_pids():
    """Processes whose parent is this one (Linux /proc scan; multiprocessing as fallback)."""
    me = os.getpid()
    pids = {p.pid for p in multiprocessing.active_children()}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == me:
            pids.add(int(entry))
    return pids


def test_commit_does_not_handle_other_producers_pending_events():
    """Defect: commit handles every pending event, other producers' too."""
    counter, store = counting_store()
    with store:
        store.subscribe(Event("p", id="other"))
        tx = store.begin_transaction()
        tx.publish(Event("p", id="mine"))
        tx.commit()
        assert counter == Counter({"mine": 1})
        assert store.publish() == 1
        assert counter == Counter({"mine": 1, "other": 1})


def test_commit_does_not_stop_at_the_first_error_and_skip_the_rest():
    """Defect: commit stops at the first error and silently skips the rest."""
    seen = []

    def handler(ctx, ev):
        seen.append(ev.data)
        if ev.data == 0:
            raise ValueError("first event fails")

    d = Dispatcher()
    d.register("p", handler)
    with EventStore(d, 8) as store:
        tx = store.begin_transaction()
        for i in range(3):
            tx.publish(Event("p", i))
        with pytest.raises(ValueError):
            tx.commit()
        assert seen == [0, 1, 2]
        assert store.publish() == 0


def test_rollback_does_not_delete_other_producers_events():
    """Defect: rollback deletes other producers' events."""
    counter, store = counting_store()
    with store:
        store.subscribe(Event("p", id="other"))
        tx = store.begin_transaction()
        tx.publish(Event("p", id="mine"))
        tx.rollback()
        assert store.publish() == 1
        assert counter == Counter({"other": 1})


def test_rollback_after_commit_does_not_leave_the_store_full():
    """Defect: rollback after a commit leaves the store permanently "full" (the README example
    ``if err := tx.Commit(ctx); err != nil { tx.Rollback() }`` does exactly that)."""
    counter, store = counting_store(size=4, policy=RETURN_ERROR)
    with store:
        tx = store.begin_transaction()
        for i in range(4):
            tx.publish(Event("p", id=f"tx-{i}"))
        tx.commit()
        tx.rollback()
        for i in range(4):
            store.subscribe(Event("p", id=f"after-{i}"))
        assert store.publish() == 4
        assert len(counter) == 8


def test_replayed_dead_letter_that_fails_again_keeps_counting_attempts():
    """Defect: DLQ ``attempts`` is reset to 1 when a replayed event fails again, so
    "stop after N attempts" never trips."""

    def broken(ctx, ev):
        raise RuntimeError("still broken")

    d = Dispatcher()
    d.register("p", broken)
    dlq = DeadLetterQueue()
    with EventStore(d, 8, dlq=dlq) as store:
        store.subscribe(Event("p"))
        store.publish()
        for expected in (2, 3, 4):
            dlq.replay(store)
            assert [letter.attempts for letter in dlq.entries()] == [expected]


def test_on_after_fires_when_a_per_event_handler_raises():
    """Defect: OnAfter does not fire when a per-event handler panics."""

    def broken(ctx, ev):
        raise RuntimeError("boom")

    d = Dispatcher()
    d.register("p", broken)
    after = []
    with EventStore(d, 8) as store:
        store.on_after(lambda ctx, ev, res, exc: after.append(type(exc)))
        store.subscribe(Event("p"))
        store.publish()
    assert after == [RuntimeError]


def test_failed_batch_chunk_counts_one_error_per_event():
    """Defect: errors are counted once per failing batch chunk although each event becomes a
    dead letter."""

    def broken(ctx, events):
        raise RuntimeError("batch failed")

    dlq = DeadLetterQueue()
    with EventStore(Dispatcher(), 8, dlq=dlq) as store:
        store.register_batch("p", 4, broken)
        for i in range(4):
            store.subscribe(Event("p", i))
        store.publish()
        assert store.metrics().errors == 4
        assert len(dlq) == 4


def test_sync_mode_starts_no_worker_pool_and_leaks_nothing_without_drain():
    """Defect: the worker pool starts even in sync mode and leaks without drain."""
    children_before = child_pids()
    threads_before = threading.active_count()
    store = EventStore(Dispatcher(), 8, workers=0)
    try:
        store.subscribe(Event("p"))
        store.publish()
        assert child_pids() - children_before == set()
        assert threading.active_count() == threads_before
    finally:
        store.drain()


def test_publish_after_drain_always_raises_store_closed():
    """Defect: publish after drain panics half the time (instead of a clean, reliable error)."""
    for _ in range(20):
        store = EventStore(Dispatcher(), 8)
        store.subscribe(Event("p"))
        store.drain()
        with pytest.raises(StoreClosed):
            store.publish()


def test_unhashable_projection_is_rejected_and_later_publishes_still_work():
    """Defect: an unhashable projection is accepted by subscribe and then breaks every later publish."""
    counter, store = counting_store()
    with store:
        with pytest.raises(TypeError):
            store.subscribe(Event({"a": "dict"}, id="bad"))
        for i in range(3):
            store.subscribe(Event("p", id=str(i)))
            assert store.publish() == 1
        assert len(counter) == 3


def test_exponential_backoff_does_not_overflow_after_about_40_retries():
    """Defect: exponential backoff overflows to negative or zero delays after about 40 retries."""
    backoff = exponential_backoff(0.1, cap=60.0)
    delays = [backoff(n) for n in range(1, 201)]
    assert all(0 < d <= 60.0 for d in delays)
    assert delays[39:] == [60.0] * len(delays[39:])
    uncapped = exponential_backoff(0.1)
    assert all(uncapped(n) > 0 for n in range(30, 70))


def test_publish_reports_how_many_events_it_took_so_empty_publishes_are_visible():
    """Defect: the published publish benchmark measured an empty publish (only the first
    iteration had events); busmp's ``publish()`` returns the number of events taken, so a
    benchmark loop can see whether it dispatched anything."""
    counter, store = counting_store()
    with store:
        for i in range(5):
            store.subscribe(Event("p", id=str(i)))
            assert store.publish() == 1
        assert store.publish() == 0
        assert len(counter) == 5
