"""Lane jobs: one-event publishes written straight to an awake worker, counted done in one word
(LANE_DONE) instead of a DONE record each, and harvested by the parent (see ``_workers.pool``).

Without hooks nothing reports a lane job's success but that word, so these specs count through
the parent's own accounting: ``processed`` (every call once, failed ones too) and the DLQ must
add up to what was published, exactly (anything counted twice would show as too many)."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from busmp import BLOCK, DROP_OLDEST, RETURN_ERROR, BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore, Result
from busmp._transport.records import LANE_DONE, SLEEP, WANT_PROGRESS, split_lane_word
from busmp._workers import pool as pool_module

FLUSH = 30.0


def noop(ctx, event):
    return None


def odd_fails(ctx, event):
    if event.data % 2:
        raise ValueError(f"odd {event.data}")


def slow(ctx, event):
    time.sleep(0.0005)


def double(ctx, event):
    return Result("double", 2 * event.data)


def lane_jobs_done(store: EventStore) -> int:
    return sum(handle.lane_done for handle in store._bus.executor.handles)


def stream(store: EventStore, count: int) -> None:
    """``count`` events one at a time, as an event bus is used: subscribe, publish, and again."""
    for i in range(count):
        store.subscribe(Event("p", i))
        store.publish()


def test_one_event_publishes_go_by_lane_and_each_is_counted_once():
    d = Dispatcher()
    d.register("p", noop)
    with EventStore(d, workers=2, start_method="fork") as store:
        stream(store, 2000)
        store.flush(timeout=FLUSH)
        stats = store.stats()
        assert store.metrics().processed == 2000
        # A publish goes by lane unless both workers are behind (then it is planned and merged).
        assert 0 < lane_jobs_done(store) <= 2000
        assert stats.in_flight == 0 and stats.free_slots == stats.slots
        for handle in store._bus.executor.handles:
            assert split_lane_word(handle.jobs.control(LANE_DONE))[0] == handle.lane_done
            assert handle.results.control(WANT_PROGRESS) == 0  # flush() is over: nobody waits


def test_outcomes_of_lane_jobs_reach_hooks_and_the_dlq_with_their_own_events():
    """An OUTCOME is read before its lane job's slot is given back: every hook and dead letter
    names the event that was really handled, even while slots are reused at once."""
    d = Dispatcher()
    d.register("p", odd_fails)
    seen: list[tuple[int, bool]] = []
    with EventStore(d, buffer_size=16, workers=2, start_method="fork", dlq=DeadLetterQueue()) as store:
        store.on_after(lambda ctx, ev, result, error: seen.append((ev.data, error is None)))
        for i in range(1000):
            store.subscribe(Event("p", i), timeout=FLUSH)
            store.publish()
        store.flush(timeout=FLUSH)
        letters = store.dlq.entries()
        metrics = store.metrics()
        assert lane_jobs_done(store) > 0
    assert sorted(seen) == [(i, i % 2 == 0) for i in range(1000)]
    assert sorted(letter.event.data for letter in letters) == list(range(1, 1000, 2))
    assert all(isinstance(letter.error, ValueError) for letter in letters)
    assert (metrics.processed, metrics.errors) == (1000, 500)


@pytest.mark.parametrize("policy_ring", [(DROP_OLDEST, 1 << 12), (BLOCK, 8), (RETURN_ERROR, 8)],
                         ids=["drop_oldest", "block", "return_error"])
def test_a_worker_killed_mid_stream_charges_exactly_what_it_held(policy_ring):
    """No hooks: lane jobs report nothing but LANE_DONE. A worker killed while it holds some
    turns exactly those into WorkerCrashed dead letters; the rest are counted handled, once."""
    policy, ring = policy_ring
    d = Dispatcher()
    d.register("p", slow)
    total, refused = 1500, 0
    store = EventStore(d, buffer_size=ring, policy=policy, workers=2, start_method="fork", dlq=DeadLetterQueue())
    try:
        for i in range(total):
            try:
                store.subscribe(Event("p", i), timeout=FLUSH)
            except BufferFull:
                refused += 1  # RETURN_ERROR with every slot in a worker: refused, the store unchanged
            store.publish()
            if i == total // 3:
                os.kill(store.stats().worker_pids[0], signal.SIGKILL)
        store.flush(timeout=FLUSH)
        letters = store.dlq.entries()
        metrics, stats = store.metrics(), store.stats()
    finally:
        store.drain(timeout=FLUSH)
    dead = [letter.event.data for letter in letters]
    assert all(type(letter.error).__name__ == "WorkerCrashed" for letter in letters)
    assert len(dead) == len(set(dead))
    # processed counts every call once, a failed one too: the dead letters are its errors.
    assert metrics.errors == len(dead)
    assert metrics.processed + stats.dropped + refused == total
    assert stats.in_flight == 0 and stats.free_slots == stats.slots


def test_a_sleeping_worker_is_woken_by_its_doorbell():
    """An idle worker announces its sleep (SLEEP odd); a lane job for it rings its doorbell."""
    d = Dispatcher()
    d.register("p", double)
    with EventStore(d, workers=1, start_method="fork") as store:
        handle = store._bus.executor.handles[0]
        for i in range(5):
            time.sleep(0.05)
            assert handle.jobs.control(SLEEP) % 2 == 1, "an idle worker sleeps on its doorbell"
            t0 = time.monotonic()
            assert [r.value for r in store.submit(Event("p", i)).result(timeout=FLUSH)] == [2 * i]
            assert time.monotonic() - t0 < 5.0
        assert lane_jobs_done(store) == 5


def test_flush_from_another_thread_sees_a_stream_finish():
    """flush() in one thread while another streams: it returns once all that was published
    before it returned is done (the waiting thread asks the workers for progress)."""
    d = Dispatcher()
    d.register("p", slow)
    with EventStore(d, workers=2, start_method="fork") as store:
        done = threading.Event()

        def produce() -> None:
            stream(store, 600)
            done.set()

        producer = threading.Thread(target=produce)
        producer.start()
        while not done.is_set():
            store.flush(timeout=FLUSH)
        producer.join()
        store.flush(timeout=FLUSH)
        assert store.metrics().processed == 600
        assert store.stats().in_flight == 0


def slower(ctx, event):
    time.sleep(0.003)


def test_publishes_to_a_busy_lane_worker_are_held_and_travel_together():
    """A stream faster than its one worker: a publish while the worker is still busy with the
    lane jobs before it is held, not made a job of its own; the held events go together
    (as a lane job when the worker has caught up, planned when it has not within HOLD_SECONDS)."""
    d = Dispatcher()
    d.register("p", slower)
    with EventStore(d, workers=1, start_method="fork") as store:
        stream(store, 100)
        store.flush(timeout=FLUSH)
        executor = store._bus.executor
        assert store.metrics().processed == 100
        # One lane job per publish would be 100 (or LANE_DEPTH of them before the rest were
        # planned): held, the stream travels in a few jobs.
        assert lane_jobs_done(store) < 10
        assert executor._held == [] and store.stats().in_flight == 0


def test_held_events_are_handled_without_flush():
    """Nothing strands on the hold: with no flush() and no further publish, the collector hands
    the held events over (when their worker catches up, or HOLD_SECONDS later)."""
    d = Dispatcher()
    d.register("p", slower)
    with EventStore(d, workers=2, start_method="fork") as store:
        stream(store, 60)
        deadline = time.monotonic() + FLUSH
        while store.metrics().processed < 60 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert store.metrics().processed == 60


@pytest.mark.parametrize("workers", [1, 2])
def test_drain_right_after_a_held_stream_handles_every_event_once(workers):
    d = Dispatcher()
    d.register("p", odd_fails)
    d.register("p", slower)
    store = EventStore(d, workers=workers, start_method="fork", dlq=DeadLetterQueue())
    stream(store, 80)
    store.drain(timeout=FLUSH)
    assert store.metrics().processed == 160  # two handlers, each called once per event
    assert sorted(letter.event.data for letter in store.dlq.entries()) == list(range(1, 80, 2))


def test_a_position_waiting_out_a_back_off_reads_its_reset_channels_as_nothing_new(monkeypatch, caplog):
    """A worker killed twice within a second is replaced after a back-off; meanwhile its
    position's channels are reset, and the parent's count of its lane jobs with them: the
    collector, flush() and a publish must read that position as having nothing new (they once
    read the zeroed LANE_DONE against the dead worker's count and popped lane jobs it did not
    have: an IndexError in the collector, and in a flush() that read for itself)."""
    monkeypatch.setattr(pool_module, "BACKOFF_SECONDS", (1.0, 1.0))  # a back-off long enough to look
    d = Dispatcher()
    d.register("p", noop)
    caplog.set_level("ERROR", logger="busmp")
    sent = 0
    with EventStore(d, workers=2, start_method="fork") as store:
        executor = store._bus.executor
        handle = executor.handles[0]
        for _ in range(2):  # the second death comes within a second of the first worker's start
            deadline = time.monotonic() + FLUSH
            while handle.process is None and time.monotonic() < deadline:
                time.sleep(0.001)  # the first replacement starts at once; wait for it
            stream(store, 200)
            sent += 200
            store.flush(timeout=FLUSH)
            assert handle.lane_done > 0  # the stream went to position 0 (the first that keeps up)
            victim = handle.process
            os.kill(victim.pid, signal.SIGKILL)
            deadline = time.monotonic() + FLUSH
            while handle.process is victim and time.monotonic() < deadline:
                time.sleep(0.001)  # until the collector has taken the death in
        assert handle.process is None and handle.restart_at is not None  # waiting out the back-off
        assert not executor.has_news(handle)
        stream(store, 100)  # meanwhile the other worker takes the stream
        sent += 100
        store.flush(timeout=FLUSH)
        assert store.metrics().processed == sent
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
