"""Specification of sync mode used one event at a time: ``subscribe(ev); publish()`` per event.

A one-event publish of a plain event runs on a lean path (``Bus.publish_inline``); whatever it
cannot take (hooks, batch handlers, ``async def`` handlers, submitted events, several pending
events) goes the general way. Both must keep the whole contract, so these specs check what a
user sees, and (through a spy on ``Bus.claim_runs``, the general path's first step) which path
ran, where the point is that the lean one switches off or on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

from busmp import (
    BLOCK,
    RETURN_ERROR,
    BufferFull,
    Context,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    Result,
    StoreClosed,
)
from busmp._watch import TICK_SECONDS
from support import counting_dispatcher, run_threads


def recording(seen):
    """A dispatcher whose one handler, of ``"p"``, records each event's data."""
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ev.data))
    return d


def general_publishes(store, monkeypatch):
    """Count the publishes that go the general way (they claim their slots with claim_runs)."""
    bus = store._bus
    calls = []
    claim = bus.claim_runs

    def spy(slots, ticket):
        calls.append(len(slots))
        return claim(slots, ticket)

    monkeypatch.setattr(bus, "claim_runs", spy)
    return calls


def idle(store):
    stats = store.stats()
    return (stats.pending, stats.in_flight, stats.free_slots) == (0, 0, stats.slots)


def test_a_stream_of_single_events_is_handled_once_each_in_order_on_the_lean_path(monkeypatch):
    seen = []
    d = recording(seen)
    with EventStore(d, 4) as store:  # a ring far smaller than the stream: slots are reused
        general = general_publishes(store, monkeypatch)
        for i in range(1000):
            store.subscribe(Event("p", i))
            assert store.publish() == 1
        assert seen == list(range(1000))
        assert general == []
        assert store.metrics() == (1000, 1000, 0)
        assert idle(store)


def test_the_handler_gets_the_very_object_subscribed_and_the_background_context():
    got = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: got.append((ctx, ev)))
    event = Event("p", {"k": [1, 2]}, id="e1", args={"a": 1})
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))  # the projection is checked once; the next event takes the lean path
        store.publish()
        store.subscribe(event)
        store.publish()
    assert got[1][1] is event
    assert got[1][0] == Context() and got[1][0].deadline is None


def test_an_empty_publish_returns_zero_and_changes_nothing():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        store.publish()
        before = store.metrics()
        assert store.publish() == 0
        assert store.metrics() == before
        assert idle(store)


def test_a_failing_handler_is_a_dead_letter_and_the_rest_of_the_chain_still_runs(monkeypatch):
    ran = []

    def bad(ctx, ev):
        raise ValueError(f"bad {ev.data}")

    d = Dispatcher()
    d.register("p", bad, lambda ctx, ev: ran.append(ev.data))
    dlq = DeadLetterQueue()
    with EventStore(d, 8, dlq=dlq) as store:
        general = general_publishes(store, monkeypatch)
        for i in range(3):
            store.subscribe(Event("p", i))
            store.publish()
        assert general == []
        assert ran == [0, 1, 2]
        assert store.metrics() == (3, 6, 3)
        letters = dlq.entries()
        assert [str(letter.error) for letter in letters] == ["bad 0", "bad 1", "bad 2"]
        assert {letter.handler for letter in letters} == {bad.__module__ + "." + bad.__qualname__}
        assert store.stats().dead_letters == 3
        assert idle(store)


def test_a_hook_registered_mid_stream_sees_every_later_event_and_none_before(monkeypatch):
    before, after = [], []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: Result("ok", ev.data))
    with EventStore(d, 8) as store:
        general = general_publishes(store, monkeypatch)
        store.subscribe(Event("p", 0))
        store.publish()
        assert general == []
        store.on_before(lambda ctx, ev: before.append(ev.data))
        store.on_after(lambda ctx, ev, result, error: after.append((ev.data, result.value, error)))
        for i in (1, 2):
            store.subscribe(Event("p", i))
            store.publish()
        assert before == [1, 2]
        assert after == [(1, 1, None), (2, 2, None)]
        assert general == [1, 1]  # hooks need the outcomes one by one: the lean path is off
        assert store.metrics() == (3, 3, 0)


def test_middleware_added_mid_stream_wraps_the_next_event():
    log = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append(("h", ev.data)))

    def tracing(handler):
        def wrapped(ctx, ev):
            log.append(("mw", ev.data))
            return handler(ctx, ev)

        return wrapped

    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 0))
        store.publish()
        store.use(tracing)
        store.subscribe(Event("p", 1))
        store.publish()
    assert log == [("h", 0), ("mw", 1), ("h", 1)]


def test_a_handler_registered_mid_stream_joins_the_fan_out_at_the_next_publish(monkeypatch):
    log = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append(("a", ev.data)))
    with EventStore(d, 8) as store:
        general = general_publishes(store, monkeypatch)
        store.subscribe(Event("p", 0))
        store.publish()
        d.register("p", lambda ctx, ev: log.append(("b", ev.data)))
        d.register("q", lambda ctx, ev: log.append(("q", ev.data)))
        store.subscribe(Event("p", 1))
        store.publish()
        store.subscribe(Event("q", 2))
        store.publish()
        assert general == []
    assert log == [("a", 0), ("a", 1), ("b", 1), ("q", 2)]


def test_a_batch_handler_registered_mid_stream_gets_the_next_events(monkeypatch):
    singles, batches = [], []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: singles.append(ev.data))
    with EventStore(d, 8) as store:
        general = general_publishes(store, monkeypatch)
        store.subscribe(Event("p", 0))
        store.publish()
        store.register_batch("p", 10, lambda ctx, evs: batches.append([e.data for e in evs]))
        for i in (1, 2):
            store.subscribe(Event("p", i))
            store.publish()
        assert general == [1, 1]
        assert singles == [0, 1, 2] and batches == [[1], [2]]
        assert store.metrics() == (3, 5, 0)


def test_an_event_without_a_handler_is_counted_unhandled():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        for projection in ("p", "nobody", "p", "nobody"):
            store.subscribe(Event(projection))
            assert store.publish() == 1
        stats = store.stats()
        assert (stats.processed, stats.unhandled) == (2, 2)
        assert idle(store)


def test_follow_ups_emitted_on_the_lean_path_are_handled_breadth_first():
    log = []
    d = Dispatcher()

    def parent(ctx, ev):
        log.append(("parent", ev.data))
        ctx.emit(Event("child", (ev.data, "a")))
        ctx.emit(Event("child", (ev.data, "b")))

    d.register("parent", parent)
    d.register("child", lambda ctx, ev: log.append(("child", ev.data)))
    with EventStore(d, 8) as store:
        for i in range(2):
            store.subscribe(Event("parent", i))
            assert store.publish() == 1
            # publish() returns once the follow-ups are handled too
            assert log[-2:] == [("child", (i, "a")), ("child", (i, "b"))]
        assert store.metrics() == (6, 6, 0)
        assert store._bus.followups == 0
        assert idle(store)


def test_follow_ups_of_a_publish_nested_in_a_handler_stay_with_the_publish_that_ran_them():
    log = []
    d = Dispatcher()
    with EventStore(d, 8) as store:

        def outer(ctx, ev):
            ctx.emit(Event("leaf", "outer-1"))
            store.subscribe(Event("inner"))
            assert store.publish() == 1
            assert log == ["inner", "leaf inner"]  # the nested publish handled its own follow-up only
            ctx.emit(Event("leaf", "outer-2"))

        def inner(ctx, ev):
            log.append("inner")
            ctx.emit(Event("leaf", "inner"))

        d.register("outer", outer)
        d.register("inner", inner)
        d.register("leaf", lambda ctx, ev: log.append(f"leaf {ev.data}"))
        store.subscribe(Event("outer"))
        assert store.publish() == 1
        assert log == ["inner", "leaf inner", "leaf outer-1", "leaf outer-2"]
        assert store.metrics() == (5, 5, 0)
        assert store._bus.followups == 0
        assert idle(store)


def test_follow_ups_emitted_in_several_threads_at_once_are_each_handled_once():
    counter, lock = Counter(), threading.Lock()
    d = counting_dispatcher(counter, lock, "leaf")
    d.register("p", lambda ctx, ev: ctx.emit(Event("leaf", id=f"leaf-{ev.id}")))
    threads, per_thread = 4, 1000
    with EventStore(d, 1 << 10) as store:
        start = threading.Barrier(threads)

        def producer(k):
            start.wait()
            for i in range(per_thread):
                store.subscribe(Event("p", id=f"{k}-{i}"))
                store.publish()

        run_threads([lambda k=k: producer(k) for k in range(threads)], limit=60)
        store.flush(timeout=10)
        total = threads * per_thread
        assert len(counter) == total and set(counter.values()) == {1}
        assert store.metrics() == (2 * total, 2 * total, 0)
        assert store._bus.followups == 0
        assert idle(store)


def test_max_followups_holds_on_the_lean_path_and_emit_works_again_after():
    d = Dispatcher()
    refused = []

    def storm(ctx, ev):
        try:
            ctx.emit(Event("storm", ev.data + 1))
            ctx.emit(Event("storm", ev.data + 1))
        except BufferFull as exc:
            refused.append(str(exc))

    d.register("storm", storm)
    with EventStore(d, 1 << 10, max_followups=16) as store:
        store.subscribe(Event("storm", 0))
        store.publish()
        assert refused and "max_followups" in refused[0]
        published, processed, _ = store.metrics()
        assert published == processed  # every emitted event was handled
        assert store._bus.followups == 0
        refused.clear()
        store.subscribe(Event("storm", 100))
        store.publish()
        assert store.metrics().published > published + 1  # emit was accepted again


def test_a_handler_that_returns_a_coroutine_is_awaited_and_its_emits_are_handled():
    log = []
    d = Dispatcher()

    async def later(ctx, ev):
        await asyncio.sleep(0)
        ctx.emit(Event("child", ev.data))
        return Result("done")

    def deferring(handler):  # a middleware that makes the call async: seen only when it runs
        def wrapped(ctx, ev):
            return later(ctx, ev) if ev.projection == "p" else handler(ctx, ev)

        return wrapped

    d.register("p", lambda ctx, ev: log.append(("p", ev.data)), lambda ctx, ev: log.append(("after", ev.data)))
    d.register("child", lambda ctx, ev: log.append(("child", ev.data)))
    with EventStore(d, 8) as store:
        store.use(deferring)
        store.subscribe(Event("p", 1))
        assert store.publish() == 1
        # each handler of the chain became the coroutine: two emits, no direct log entries
        assert log == [("child", 1), ("child", 1)]
        assert store.metrics() == (3, 4, 0)
        assert idle(store)


def test_a_handler_made_async_inside_a_running_loop_is_a_dead_letter_naming_apublish():
    d = Dispatcher()

    async def later(ctx, ev):
        return None

    d.register("p", lambda ctx, ev: None)
    dlq = DeadLetterQueue()
    with EventStore(d, 8, dlq=dlq) as store:
        store.use(lambda handler: (lambda ctx, ev: later(ctx, ev)))

        async def main():
            store.subscribe(Event("p"))
            return store.publish()

        assert asyncio.run(main()) == 1
        assert store.metrics() == (1, 1, 1)
        assert "apublish" in str(dlq.entries()[0].error)
        assert idle(store)


def test_async_def_handlers_go_the_general_way_and_are_awaited(monkeypatch):
    seen = []
    d = Dispatcher()

    async def handler(ctx, ev):
        await asyncio.sleep(0)
        seen.append(ev.data)

    d.register("p", handler)
    with EventStore(d, 8) as store:
        general = general_publishes(store, monkeypatch)
        for i in range(3):
            store.subscribe(Event("p", i))
            store.publish()
        assert seen == [0, 1, 2] and general == [1, 1, 1]


def test_ctrl_c_in_a_handler_propagates_and_leaves_nothing_in_flight():
    d = Dispatcher()
    calls = []

    def handler(ctx, ev):
        calls.append(ev.data)
        if ev.data == 1:
            raise KeyboardInterrupt

    d.register("p", handler)
    with EventStore(d, 4) as store:
        store.subscribe(Event("p", 0))
        store.publish()
        store.subscribe(Event("p", 1))
        with pytest.raises(KeyboardInterrupt):
            store.publish()
        assert idle(store)
        store.subscribe(Event("p", 2))
        assert store.publish() == 1
        store.flush(timeout=1)  # returns: nothing is left in flight
        assert calls == [0, 1, 2]
        assert store.metrics() == (3, 2, 0)  # the interrupted call never completed


def test_return_error_at_a_full_ring_refuses_and_leaves_the_store_unchanged_then_streams_again():
    seen = []
    d = recording(seen)
    with EventStore(d, 2, RETURN_ERROR) as store:
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        before = store.stats()
        with pytest.raises(BufferFull):
            store.subscribe(Event("p", 2))
        after = store.stats()
        assert (after.published, after.pending, after.free_slots) == (before.published, 2, 0)
        assert store.publish() == 2
        for i in range(3, 6):
            store.subscribe(Event("p", i))
            assert store.publish() == 1
        assert seen == [0, 1, 3, 4, 5]
        assert idle(store)


def test_drop_oldest_at_a_full_ring_drops_the_oldest_pending_event():
    seen = []
    d = recording(seen)
    with EventStore(d, 2) as store:
        for i in range(3):
            store.subscribe(Event("p", i))
        assert store.publish() == 2
        store.subscribe(Event("p", 3))
        assert store.publish() == 1
        assert seen == [1, 2, 3]
        assert store.stats().dropped == 1
        assert store.metrics() == (4, 3, 0)


def test_block_at_a_full_ring_wakes_when_a_one_event_publish_frees_the_slot():
    seen = []
    d = recording(seen)
    with EventStore(d, 1, BLOCK) as store:
        store.subscribe(Event("p", 0))
        subscribed = threading.Event()

        def producer():
            store.subscribe(Event("p", 1), timeout=10)
            subscribed.set()

        thread = threading.Thread(target=producer)
        thread.start()
        deadline = time.monotonic() + 5
        while store._bus._room_sleepers == 0 and time.monotonic() < deadline:
            time.sleep(0.001)  # until the producer waits for room
        assert not subscribed.is_set()
        assert store.publish() == 1  # the lean path frees the one slot: the producer must wake
        assert subscribed.wait(5)
        thread.join(5)
        assert store.publish() == 1
        assert seen == [0, 1]


def test_flush_in_another_thread_returns_once_the_stream_is_handled():
    d = Dispatcher()
    release = threading.Event()
    d.register("p", lambda ctx, ev: release.wait(5))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        publisher = threading.Thread(target=store.publish)
        publisher.start()
        deadline = time.monotonic() + 5
        while store.stats().in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        flushed = threading.Event()
        flusher = threading.Thread(target=lambda: (store.flush(timeout=10), flushed.set()))
        flusher.start()
        time.sleep(0.05)
        assert not flushed.is_set()  # the handler still runs
        release.set()
        assert flushed.wait(5)
        publisher.join(5)
        flusher.join(5)
        assert store.metrics() == (1, 1, 0)


def test_several_producer_threads_streaming_into_one_store_lose_and_duplicate_nothing():
    counter, lock = Counter(), threading.Lock()
    d = counting_dispatcher(counter, lock)
    threads, per_thread = 4, 2000
    errors = []
    with EventStore(d, 8, BLOCK) as store:  # a small ring: producers meet it full
        start = threading.Barrier(threads)

        def producer(k):
            try:
                start.wait()
                for i in range(per_thread):
                    store.subscribe(Event("p", id=f"{k}-{i}"), timeout=10)
                    store.publish()
            except BaseException as exc:
                errors.append(exc)

        run_threads([lambda k=k: producer(k) for k in range(threads)], limit=60)
        store.publish()  # an event another thread subscribed after a producer's last publish
        store.flush(timeout=10)
        assert errors == []
        assert len(counter) == threads * per_thread and set(counter.values()) == {1}
        assert store.metrics() == (threads * per_thread, threads * per_thread, 0)
        assert idle(store)


def test_a_handler_that_subscribes_and_publishes_again_gets_each_event_handled_once():
    seen = []
    d = Dispatcher()
    with EventStore(d, 4) as store:

        def handler(ctx, ev):
            seen.append(ev.data)
            if ev.data < 5:
                store.subscribe(Event("p", ev.data + 1))
                assert store.publish() == 1  # re-entrant: handled before this handler returns
                assert seen[-1] == 5

        d.register("p", handler)
        store.subscribe(Event("p", 0))
        assert store.publish() == 1
        assert seen == [0, 1, 2, 3, 4, 5]
        assert store.metrics() == (6, 6, 0)
        assert idle(store)


def test_submit_between_single_publishes_gets_its_result():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: Result("ok", ev.data * 2))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        store.publish()
        future = store.submit(Event("p", 2))
        assert [r.value for r in future.result(timeout=1)] == [4]
        store.subscribe(Event("p", 3))
        store.publish()
        assert store.metrics() == (3, 3, 0)


def test_an_unpicklable_payload_of_a_checked_projection_is_refused_and_leaves_the_store_unchanged():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    lock = threading.Lock()
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))  # the projection object is checked (and cached) here
        for bad in (Event("p", lock), Event("p", 1, id="x", args={"lock": lock})):
            with pytest.raises(TypeError, match="cannot be pickled"):
                store.subscribe(bad)
        assert store.stats().pending == 1 and store.metrics() == (1, 0, 0)
        store.subscribe(Event("p", lambda: None))  # what cloudpickle carries is accepted, as ever
        assert store.publish() == 2
    with EventStore(d, 8, check_pickle=False) as store:
        store.subscribe(Event("p", 1))
        store.subscribe(Event("p", lock))
        assert store.publish() == 2


def test_an_event_subclass_and_a_context_are_handled_as_ever():
    got = []

    class Tagged(Event):
        __slots__ = ()

    d = Dispatcher()
    d.register("p", lambda ctx, ev: got.append((type(ev).__name__, ctx.value("k"))))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        store.publish()
        store.subscribe(Tagged("p"))
        store.publish()
        store.subscribe(Event("p"), Context({"k": "v"}))
        store.publish()
    assert got == [("Event", None), ("Tagged", None), ("Event", "v")]


def test_a_stream_after_drain_is_refused():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    store = EventStore(d, 8)
    store.subscribe(Event("p"))
    store.publish()
    store.drain()
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p"))
    with pytest.raises(StoreClosed):
        store.publish()


def test_the_shared_statistics_and_the_ring_cursors_follow_a_stream():
    from busmp import read_stats

    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        for i in range(100):
            store.subscribe(Event("p", i))
            store.publish()
        store.subscribe(Event("p", 100))
        time.sleep(TICK_SECONDS * 1.5)
        store.publish()  # a tick is due: this publish writes it, at its end
        stats = read_stats(store.name)
        assert (stats.published, stats.processed, stats.pending, stats.in_flight) == (101, 101, 0, 0)
        header = store._bus.ring.header
        assert (int(header["written"]), int(header["dispatched"]), int(header["released"])) == (101, 101, 101)
