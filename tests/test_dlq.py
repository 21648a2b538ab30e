"""Specification of the DeadLetterQueue and DeadLetter records in a sync-mode store."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest

from busmp import (
    BLOCK,
    DROP_OLDEST,
    RETURN_ERROR,
    StoreClosed,
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


@pytest.mark.parametrize("policy", [DROP_OLDEST, BLOCK, RETURN_ERROR])
def test_replay_into_a_ring_full_of_other_pending_events_publishes_them_and_loses_nothing(policy):
    q = DeadLetterQueue()
    with store_with_failures(q, n=2, size=2, policy=policy) as store:
        store.subscribe(Event("other", "pending-0"))
        store.subscribe(Event("other", "pending-1"))
        q.replay(store)  # no error: each round publishes, which makes the room
        assert sorted((letter.event.id, letter.attempts) for letter in q.entries()) == [("ev-0", 2), ("ev-1", 2)]
        assert store.stats().dropped == 0
        assert store.metrics() == (2 + 2 + 2, 2 + 2, 2 + 2)  # "other" has no handler: not processed


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("policy", [DROP_OLDEST, BLOCK, RETURN_ERROR])
def test_replaying_far_more_entries_than_the_ring_holds_handles_every_one_once(policy, workers):
    handled: list[str] = []
    q = DeadLetterQueue()
    q.extend(DeadLetter.now(Event("ok", i, id=f"e{i}"), OrderRejected("earlier"), 1, "h") for i in range(20_000))
    d = Dispatcher()
    d.register("ok", lambda ctx, ev: None)
    with EventStore(d, 1 << 12, policy, workers=workers, dlq=q) as store:
        store.on_after(lambda ctx, ev, res, err: handled.append(ev.id))
        q.replay(store)
        store.flush(timeout=60)
        assert len(q) == 0
        assert store.stats().dropped == 0
        assert store.metrics() == (20_000, 20_000, 0)
    assert sorted(handled) == sorted(f"e{i}" for i in range(20_000))


def test_replay_tries_every_entry_and_keeps_those_that_cannot_be_enqueued_with_the_first_error():
    q = DeadLetterQueue()
    with store_with_failures(q, n=3) as store:
        letters = q.drain()
        bad = DeadLetter.now(Event("bad", threading.Lock(), id="unpicklable"), OrderRejected("x"), 1, "h")
        q.extend([letters[0], bad, letters[2]])
        with pytest.raises(TypeError, match="cannot be pickled"):
            q.replay(store)
        got = sorted((letter.event.id, letter.attempts) for letter in q.entries())
        # ev-0 and ev-2 ran again and failed again; the unpicklable one stayed, attempts + 1
        assert got == [("ev-0", 2), ("ev-2", 2), ("unpicklable", 2)]


def test_replay_into_a_drained_store_keeps_every_entry_and_raises_store_closed():
    q = DeadLetterQueue()
    store = store_with_failures(q, n=2)
    store.drain()
    with pytest.raises(StoreClosed):
        q.replay(store)
    assert sorted((letter.event.id, letter.attempts) for letter in q.entries()) == [("ev-0", 2), ("ev-1", 2)]


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
