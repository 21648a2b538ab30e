"""Specification of back-pressure (DROP_OLDEST, RETURN_ERROR, BLOCK) and of what subscribe
and subscribe_many reject, in a sync-mode store."""

from __future__ import annotations

import threading
import time

import pytest

from busmp import (
    BLOCK,
    DROP_OLDEST,
    RETURN_ERROR,
    BufferFull,
    BusError,
    Context,
    Dispatcher,
    Event,
    EventStore,
)

#: Slack for comparing our clock with the store's own (resolution, not scheduling).
CLOCK_SLACK = 0.001


def collecting_dispatcher(seen, projection="p"):
    d = Dispatcher()
    d.register(projection, lambda ctx, ev: seen.append(ev.data))
    return d


def call_in_thread(fn, limit=10.0):
    """Run ``fn`` in a thread so a store that wrongly blocks forever fails instead of hanging.

    Returns (returned value, raised exception, seconds it took)."""
    box = {}

    def run():
        start = time.perf_counter()
        try:
            box["value"] = fn()
        except BaseException as exc:  # reported to the test
            box["error"] = exc
        box["elapsed"] = time.perf_counter() - start

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"call still blocked after {limit} s"
    return box.get("value"), box.get("error"), box["elapsed"]


# --------------------------------------------------------------------------- DROP_OLDEST


def test_drop_oldest_65536_ring_with_65636_events_handles_exactly_the_newest_65536():
    seen = []
    with EventStore(collecting_dispatcher(seen), 1 << 16, DROP_OLDEST) as store:
        for i in range(65_636):
            store.subscribe(Event("p", i))
        assert store.publish() == 65_536
        assert len(seen) == 65_536
        assert seen == list(range(100, 65_636))
        assert store.metrics() == (65_636, 65_536, 0)


def test_drop_oldest_ring_of_2_with_events_0_to_4_handles_only_3_and_4():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, DROP_OLDEST) as store:
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
        assert seen == [3, 4]
        assert store.metrics() == (5, 2, 0)


def test_drop_oldest_is_the_default_policy():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2) as store:
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
    assert seen == [3, 4]


def test_drop_oldest_counts_dropped_events_in_stats():
    with EventStore(Dispatcher(), 2, DROP_OLDEST) as store:
        for i in range(5):
            store.subscribe(Event("p", i))
        assert store.stats().dropped == 3


def test_drop_oldest_never_drops_an_event_that_was_already_published():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, DROP_OLDEST) as store:
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        store.publish()
        store.subscribe(Event("p", 2))
        store.subscribe(Event("p", 3))
        store.publish()
    assert seen == [0, 1, 2, 3]


def test_drop_oldest_with_payloads_larger_than_a_slot_keeps_the_newest_intact():
    seen = []
    big = [bytes([i]) * 50_000 for i in range(5)]
    with EventStore(collecting_dispatcher(seen), 2, DROP_OLDEST) as store:
        for payload in big:
            store.subscribe(Event("p", payload))
        store.publish()
        assert store.metrics() == (5, 2, 0)
    assert seen == big[3:]


# --------------------------------------------------------------------------- RETURN_ERROR


def test_return_error_ring_of_8_rejects_the_9th_with_buffer_full_and_leaves_store_unchanged():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8, RETURN_ERROR) as store:
        for i in range(8):
            store.subscribe(Event("p", i))
        with pytest.raises(BufferFull):
            store.subscribe(Event("p", 8))
        assert store.metrics() == (8, 0, 0)
        assert store.publish() == 8
        assert seen == list(range(8))
        assert store.metrics() == (8, 8, 0)


def test_return_error_rejecting_a_large_event_leaves_the_store_unchanged():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, RETURN_ERROR) as store:
        store.subscribe(Event("p", b"a" * 10_000))
        store.subscribe(Event("p", b"b" * 10_000))
        with pytest.raises(BufferFull):
            store.subscribe(Event("p", b"c" * 10_000))
        store.publish()
        store.subscribe(Event("p", b"d" * 10_000))
        store.publish()
    assert seen == [b"a" * 10_000, b"b" * 10_000, b"d" * 10_000]


def test_buffer_full_is_a_bus_error():
    assert issubclass(BufferFull, BusError)


def test_return_error_accepts_again_after_publish_frees_the_ring():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, RETURN_ERROR) as store:
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        with pytest.raises(BufferFull):
            store.subscribe(Event("p", "rejected"))
        store.publish()
        store.subscribe(Event("p", 2))
        store.subscribe(Event("p", 3))
        store.publish()
    assert seen == [0, 1, 2, 3]


# --------------------------------------------------------------------------- BLOCK


def full_block_store(seen, size=2):
    store = EventStore(collecting_dispatcher(seen), size, BLOCK)
    for i in range(size):
        store.subscribe(Event("p", i))
    return store


def test_block_on_full_ring_times_out_after_at_least_the_timeout():
    seen = []
    with full_block_store(seen) as store:
        _, error, elapsed = call_in_thread(lambda: store.subscribe(Event("p", "late"), timeout=0.04))
        assert isinstance(error, TimeoutError)
        assert elapsed >= 0.04 - CLOCK_SLACK
        assert store.metrics() == (2, 0, 0)
        assert store.publish() == 2
    assert seen == [0, 1]


def test_block_honours_the_context_deadline():
    seen = []
    with full_block_store(seen) as store:

        def subscribe_with_deadline():
            return store.subscribe(Event("p", "late"), Context().with_timeout(0.04))

        _, error, elapsed = call_in_thread(subscribe_with_deadline)
        assert isinstance(error, TimeoutError)
        assert elapsed >= 0.04 - CLOCK_SLACK
        assert store.publish() == 2
    assert seen == [0, 1]


def test_block_with_already_expired_context_raises_timeout_error():
    with full_block_store([]) as store:
        _, error, _ = call_in_thread(
            lambda: store.subscribe(Event("p"), Context(deadline=time.time() - 1))
        )
        assert isinstance(error, TimeoutError)


def test_block_does_not_wait_when_there_is_room():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, BLOCK) as store:
        _, error, _ = call_in_thread(lambda: store.subscribe(Event("p", 0), timeout=0.04))
        assert error is None
        store.publish()
    assert seen == [0]


def test_block_unblocks_when_another_thread_publishes():
    seen = []
    with full_block_store(seen) as store:

        def publish_later():
            time.sleep(0.05)
            store.publish()

        publisher = threading.Thread(target=publish_later)
        publisher.start()
        _, error, _ = call_in_thread(lambda: store.subscribe(Event("p", 2), timeout=5))
        publisher.join()
        assert error is None
        store.publish()
        assert store.metrics() == (3, 3, 0)
    assert seen == [0, 1, 2]


# --------------------------------------------------------------------------- invalid events


def test_subscribe_unhashable_projection_is_type_error_and_store_unchanged():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        with pytest.raises(TypeError):
            store.subscribe(Event(["not", "hashable"], 0))
        assert store.metrics() == (0, 0, 0)
        store.subscribe(Event("p", 1))
        assert store.publish() == 1
        assert seen == [1]


def test_subscribe_unpicklable_event_is_type_error_naming_the_event_and_store_unchanged():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        with pytest.raises(TypeError) as info:
            store.subscribe(Event("locked", data=threading.Lock(), id="evt-42"))
        message = str(info.value)
        assert "evt-42" in message or "locked" in message
        assert store.metrics() == (0, 0, 0)
        store.subscribe(Event("p", 1))
        assert store.publish() == 1
        assert seen == [1]


@pytest.mark.parametrize("not_an_event", ["p", {"projection": "p"}, ("p", 1), None])
def test_subscribe_of_something_that_is_not_an_event_is_type_error(not_an_event):
    with EventStore(Dispatcher(), 8) as store:
        with pytest.raises(TypeError):
            store.subscribe(not_an_event)
        assert store.metrics() == (0, 0, 0)


def test_rejected_event_under_return_error_does_not_take_a_slot():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, RETURN_ERROR) as store:
        with pytest.raises(TypeError):
            store.subscribe(Event("p", threading.Lock()))
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        store.publish()
    assert seen == [0, 1]


# --------------------------------------------------------------------------- subscribe_many


def test_subscribe_many_returns_the_number_accepted_and_counts_them():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        assert store.subscribe_many([Event("p", i) for i in range(3)]) == 3
        assert store.metrics() == (3, 0, 0)
        assert store.publish() == 3
    assert seen == [0, 1, 2]


def test_subscribe_many_of_nothing_returns_zero():
    with EventStore(Dispatcher(), 8) as store:
        assert store.subscribe_many([]) == 0
        assert store.publish() == 0


def test_subscribe_many_accepts_a_generator():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        assert store.subscribe_many(Event("p", i) for i in range(3)) == 3
        store.publish()
    assert seen == [0, 1, 2]


def test_subscribe_many_passes_the_context_to_the_handlers():
    seen = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ctx.value("k")))
    with EventStore(d, 8) as store:
        store.subscribe_many([Event("p"), Event("p")], Context({"k": "v"}))
        store.publish()
    assert seen == ["v", "v"]


@pytest.mark.parametrize(
    "bad",
    [Event(["unhashable"]), Event("p", threading.Lock()), "not an event"],
    ids=["unhashable-projection", "unpicklable-data", "not-an-event"],
)
def test_subscribe_many_with_one_invalid_event_rejects_the_whole_call(bad):
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        with pytest.raises(TypeError):
            store.subscribe_many([Event("p", 0), bad, Event("p", 2)])
        assert store.metrics() == (0, 0, 0)
        assert store.publish() == 0
        assert seen == []
        store.subscribe(Event("p", 3))
        store.publish()
        assert seen == [3]


def test_subscribe_many_under_drop_oldest_keeps_the_newest():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, DROP_OLDEST) as store:
        assert store.subscribe_many([Event("p", i) for i in range(5)]) == 5
        store.publish()
        assert store.metrics() == (5, 2, 0)
    assert seen == [3, 4]


def test_subscribe_many_under_return_error_accepts_the_events_that_fit():
    seen = []
    with EventStore(collecting_dispatcher(seen), 4, RETURN_ERROR) as store:
        store.subscribe(Event("p", "pending-0"))
        store.subscribe(Event("p", "pending-1"))
        assert store.subscribe_many([Event("p", f"batch-{i}") for i in range(5)]) == 2
        assert store.metrics() == (4, 0, 0)
        store.publish()
    assert seen == ["pending-0", "pending-1", "batch-0", "batch-1"]


def test_subscribe_many_under_return_error_raises_buffer_full_when_none_fits():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, RETURN_ERROR) as store:
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        with pytest.raises(BufferFull):
            store.subscribe_many([Event("p", "x"), Event("p", "y")])
        assert store.metrics() == (2, 0, 0)
        store.publish()
    assert seen == [0, 1]


def test_subscribe_many_under_block_returns_a_partial_count_on_timeout():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, BLOCK) as store:
        store.subscribe(Event("p", 0))
        events = [Event("p", f"batch-{i}") for i in range(3)]
        accepted, error, elapsed = call_in_thread(lambda: store.subscribe_many(events, timeout=0.04))
        assert error is None
        assert accepted == 1
        assert elapsed >= 0.04 - CLOCK_SLACK
        store.publish()
    assert seen == [0, "batch-0"]


def test_subscribe_many_under_block_raises_timeout_error_when_none_was_accepted():
    seen = []
    with full_block_store(seen) as store:
        _, error, elapsed = call_in_thread(
            lambda: store.subscribe_many([Event("p", "x")], timeout=0.04)
        )
        assert isinstance(error, TimeoutError)
        assert elapsed >= 0.04 - CLOCK_SLACK
        assert store.metrics() == (2, 0, 0)
        store.publish()
    assert seen == [0, 1]
