"""Specification of the DeadLetterQueue and DeadLetter records in a sync-mode store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from busmp import (
    BLOCK,
    RETURN_ERROR,
    BufferFull,
    Context,
    DeadLetter,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    with_retry,
)


class OrderRejected(Exception):
    pass


def always_fails(ctx, ev):
    raise OrderRejected(f"rejected {ev.data}")


def store_with_failures(dlq, n=2, size=8, policy=None):
    """A store whose 'bad' projection always fails; n failures already in ``dlq``."""
    d = Dispatcher()
    d.register("bad", always_fails)
    kwargs = {} if policy is None else {"policy": policy}
    store = EventStore(d, size, dlq=dlq, **kwargs)
    for i in range(n):
        store.subscribe(Event("bad", i, id=f"ev-{i}"))
    store.publish()
    return store


# --------------------------------------------------------------------------- the queue


def test_new_queue_is_empty():
    q = DeadLetterQueue()
    assert len(q) == 0
    assert q.entries() == []
    assert q.drain() == []


def test_entries_is_a_snapshot_copy():
    q = DeadLetterQueue()
    with store_with_failures(q, n=2):
        snapshot = q.entries()
        assert len(snapshot) == 2
        snapshot.clear()
        assert len(q) == 2
        assert len(q.entries()) == 2


def test_drain_returns_every_entry_oldest_first_and_empties_the_queue():
    q = DeadLetterQueue()
    with store_with_failures(q, n=3):
        taken = q.drain()
    assert [letter.event.id for letter in taken] == ["ev-0", "ev-1", "ev-2"]
    assert len(q) == 0
    assert q.entries() == []


# --------------------------------------------------------------------------- the records


def test_dead_letter_records_event_error_time_attempts_and_handler():
    q = DeadLetterQueue()
    with store_with_failures(q, n=1):
        pass
    [letter] = q.entries()
    assert isinstance(letter, DeadLetter)
    assert letter.event == Event("bad", 0, id="ev-0")
    assert type(letter.error) is OrderRejected
    assert str(letter.error) == "rejected 0"
    assert letter.attempts == 1
    assert always_fails.__qualname__ in letter.handler


def test_dead_letter_failed_at_is_timezone_aware_utc_and_current():
    q = DeadLetterQueue()
    before = datetime.now(timezone.utc)
    with store_with_failures(q, n=1):
        pass
    after = datetime.now(timezone.utc)
    [letter] = q.entries()
    assert letter.failed_at.tzinfo is not None
    assert letter.failed_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= letter.failed_at <= after + timedelta(seconds=1)


def test_dead_letter_handler_names_a_nested_handler_by_its_qualified_name():
    q = DeadLetterQueue()

    def inner_failure(ctx, ev):
        raise ValueError("nested")

    d = Dispatcher()
    d.register("p", lambda ctx, ev: None, inner_failure)
    with EventStore(d, 8, dlq=q) as store:
        store.subscribe(Event("p"))
        store.publish()
    [letter] = q.entries()
    assert inner_failure.__qualname__ in letter.handler
    assert "<locals>" in letter.handler


def test_dead_letter_names_the_handler_not_the_middleware_wrapping_it():
    q = DeadLetterQueue()

    def tracing(handler):
        def tracing_wrapper(ctx, ev):
            return handler(ctx, ev)

        return tracing_wrapper

    d = Dispatcher()
    d.register("bad", always_fails)
    with EventStore(d, 8, dlq=q) as store:
        store.use(tracing)
        store.use(with_retry(1))
        store.subscribe(Event("bad"))
        store.publish()
    [letter] = q.entries()
    assert always_fails.__qualname__ in letter.handler
    assert "tracing_wrapper" not in letter.handler


def test_dead_letter_is_frozen():
    q = DeadLetterQueue()
    with store_with_failures(q, n=1):
        pass
    [letter] = q.entries()
    with pytest.raises(AttributeError):
        letter.attempts = 5  # type: ignore[misc]


def test_one_dead_letter_per_failing_handler_of_an_event():
    q = DeadLetterQueue()

    def second_failure(ctx, ev):
        raise KeyError("second")

    d = Dispatcher()
    d.register("p", always_fails, lambda ctx, ev: None, second_failure)
    with EventStore(d, 8, dlq=q) as store:
        store.subscribe(Event("p", 1))
        store.publish()
        assert store.metrics() == (1, 3, 2)
    letters = q.entries()
    assert [type(letter.error) for letter in letters] == [OrderRejected, KeyError]
    assert always_fails.__qualname__ in letters[0].handler
    assert second_failure.__qualname__ in letters[1].handler


# --------------------------------------------------------------------------- replay


def test_replay_resubscribes_the_entries_and_publishes_once():
    q = DeadLetterQueue()
    handled = []
    fail = {"on": True}

    def sometimes(ctx, ev):
        if fail["on"]:
            raise OrderRejected("not yet")
        handled.append(ev.id)

    d = Dispatcher()
    d.register("p", sometimes)
    with EventStore(d, 8, dlq=q) as store:
        store.subscribe(Event("p", id="a"))
        store.subscribe(Event("p", id="b"))
        store.publish()
        assert len(q) == 2
        fail["on"] = False
        q.replay(store)
        assert sorted(handled) == ["a", "b"]
        assert len(q) == 0
        assert store.publish() == 0
        assert handled.count("a") == 1


def test_replay_passes_its_context_to_the_handlers():
    q = DeadLetterQueue()
    seen = []
    fail = {"on": True}

    def sometimes(ctx, ev):
        if fail["on"]:
            raise OrderRejected("not yet")
        seen.append(ctx.value("replayed"))

    d = Dispatcher()
    d.register("p", sometimes)
    with EventStore(d, 8, dlq=q) as store:
        store.subscribe(Event("p"))
        store.publish()
        fail["on"] = False
        q.replay(store, Context({"replayed": True}))
    assert seen == [True]


def test_entry_that_fails_again_comes_back_with_attempts_plus_one():
    q = DeadLetterQueue()
    with store_with_failures(q, n=1) as store:
        q.replay(store)
        [letter] = q.entries()
        assert letter.attempts == 2
        assert letter.event == Event("bad", 0, id="ev-0")


def test_replaying_twice_gives_attempts_3():
    q = DeadLetterQueue()
    with store_with_failures(q, n=1) as store:
        q.replay(store)
        q.replay(store)
        [letter] = q.entries()
        assert letter.attempts == 3


def test_entries_that_cannot_be_reenqueued_stay_with_attempts_plus_one_and_buffer_full_is_raised():
    q = DeadLetterQueue()
    with store_with_failures(q, n=2, size=2, policy=RETURN_ERROR) as store:
        store.subscribe(Event("other", "pending-0"))
        store.subscribe(Event("other", "pending-1"))
        with pytest.raises(BufferFull):
            q.replay(store)
        letters = q.entries()
        assert sorted(letter.event.id for letter in letters) == ["ev-0", "ev-1"]
        assert [letter.attempts for letter in letters] == [2, 2]


def test_replay_tries_every_entry_before_raising_the_first_subscribe_error():
    q = DeadLetterQueue()
    with store_with_failures(q, n=2, size=2, policy=RETURN_ERROR) as store:
        store.subscribe(Event("other", "pending"))  # room for exactly one replayed entry
        with pytest.raises(BufferFull):
            q.replay(store)
        letters = q.entries()
        # ev-0 was re-enqueued, published and failed again; ev-1 could not be enqueued
        assert sorted((letter.event.id, letter.attempts) for letter in letters) == [("ev-0", 2), ("ev-1", 2)]


def test_replay_into_a_full_block_store_gives_up_at_the_context_deadline():
    q = DeadLetterQueue()
    with store_with_failures(q, n=1, size=2, policy=BLOCK) as store:
        store.subscribe(Event("other", 0))
        store.subscribe(Event("other", 1))
        with pytest.raises(TimeoutError):
            q.replay(store, Context().with_timeout(0.04))
        [letter] = q.entries()
        assert letter.event.id == "ev-0"
        assert letter.attempts == 2


# --------------------------------------------------------------------------- attaching


def test_without_a_dlq_failures_are_only_counted():
    d = Dispatcher()
    d.register("bad", always_fails)
    with EventStore(d, 8) as store:
        assert store.dlq is None
        store.subscribe(Event("bad"))
        assert store.publish() == 1
        assert store.metrics() == (1, 1, 1)


def test_dlq_passed_to_the_constructor_is_the_store_attribute():
    q = DeadLetterQueue()
    with EventStore(Dispatcher(), 8, dlq=q) as store:
        assert store.dlq is q


def test_dlq_can_be_attached_replaced_and_detached_at_any_time():
    first, second = DeadLetterQueue(), DeadLetterQueue()
    d = Dispatcher()
    d.register("bad", always_fails)
    with EventStore(d, 8) as store:
        store.subscribe(Event("bad", id="unrecorded"))
        store.publish()
        store.dlq = first
        assert store.dlq is first
        store.subscribe(Event("bad", id="to-first"))
        store.publish()
        store.dlq = second
        store.subscribe(Event("bad", id="to-second"))
        store.publish()
        store.dlq = None
        store.subscribe(Event("bad", id="dropped"))
        store.publish()
        assert store.metrics() == (4, 4, 4)
    assert [letter.event.id for letter in first.entries()] == ["to-first"]
    assert [letter.event.id for letter in second.entries()] == ["to-second"]
