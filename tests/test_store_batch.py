"""Specification of batch handlers in a sync-mode store (register_batch)."""

from __future__ import annotations

import pytest

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Result


def chunk_recorder(chunks):
    def batch(ctx, events):
        chunks.append([ev.data for ev in events])

    return batch


def test_size_3_with_7_events_gives_chunks_of_3_3_1_in_order():
    chunks = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, chunk_recorder(chunks))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
    assert chunks == [[0, 1, 2], [3, 4, 5], [6]]


def test_size_100_with_5_events_gives_one_chunk_of_5():
    chunks = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 100, chunk_recorder(chunks))
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
    assert chunks == [[0, 1, 2, 3, 4]]


def test_batch_handler_receives_a_list_of_events():
    received = []
    with EventStore(Dispatcher(), 8) as store:
        store.register_batch("p", 10, lambda ctx, events: received.append(events))
        store.subscribe(Event("p", 1, id="a"))
        store.publish()
    assert len(received) == 1
    assert isinstance(received[0], list)
    assert received[0] == [Event("p", 1, id="a")]


def test_batch_handler_only_gets_events_of_its_projection():
    chunks = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 10, chunk_recorder(chunks))
        store.subscribe(Event("p", 1))
        store.subscribe(Event("q", 2))
        store.subscribe(Event("p", 3))
        store.publish()
    assert chunks == [[1, 3]]


def test_batches_never_span_two_publishes():
    chunks = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 10, chunk_recorder(chunks))
        store.subscribe(Event("p", 1))
        store.publish()
        store.subscribe(Event("p", 2))
        store.publish()
        assert store.publish() == 0
    assert chunks == [[1], [2]]


def test_two_batch_handlers_on_one_projection_each_get_every_event():
    first, second = [], []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 2, chunk_recorder(first))
        store.register_batch("p", 10, chunk_recorder(second))
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
    assert first == [[0, 1], [2, 3], [4]]
    assert second == [[0, 1, 2, 3, 4]]


def test_batch_and_per_event_handlers_coexist():
    chunks, single = [], []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: single.append(ev.data))
    with EventStore(d, 16) as store:
        store.register_batch("p", 10, chunk_recorder(chunks))
        for i in range(4):
            store.subscribe(Event("p", i))
        store.publish()
        assert store.metrics() == (4, 8, 0)
    assert single == [0, 1, 2, 3]
    assert chunks == [[0, 1, 2, 3]]


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size_below_one_is_value_error(size):
    with EventStore(Dispatcher(), 8) as store:
        with pytest.raises(ValueError):
            store.register_batch("p", size, lambda ctx, events: None)


def test_successful_batches_add_their_length_to_processed():
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, lambda ctx, events: None)
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
        assert store.metrics() == (7, 7, 0)


# --------------------------------------------------------------------------- failure


def failing_on_middle_chunk(calls):
    def batch(ctx, events):
        data = [ev.data for ev in events]
        calls.append(data)
        if 3 in data:
            raise ValueError("chunk failed")
        return [Result(f"ok-{x}") for x in data]

    return batch


def test_failing_chunk_makes_every_event_of_it_a_dead_letter_with_attempts_1():
    calls = []
    dlq = DeadLetterQueue()
    with EventStore(Dispatcher(), 16, dlq=dlq) as store:
        store.register_batch("p", 3, failing_on_middle_chunk(calls))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
    letters = dlq.entries()
    assert [letter.event.data for letter in letters] == [3, 4, 5]
    assert all(letter.attempts == 1 for letter in letters)
    assert all(isinstance(letter.error, ValueError) for letter in letters)


def test_failing_chunk_does_not_affect_the_other_chunks():
    calls = []
    after = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, failing_on_middle_chunk(calls))
        store.on_after(lambda ctx, ev, res, exc: after.append((ev.data, res, exc)))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
    assert calls == [[0, 1, 2], [3, 4, 5], [6]]
    ok = {data: res for data, res, exc in after if exc is None}
    assert ok == {0: Result("ok-0"), 1: Result("ok-1"), 2: Result("ok-2"), 6: Result("ok-6")}


def test_failing_chunk_fires_on_error_once_per_event():
    errors = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, failing_on_middle_chunk([]))
        store.on_error(lambda ctx, ev, exc: errors.append((ev.data, type(exc))))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
    assert sorted(errors) == [(3, ValueError), (4, ValueError), (5, ValueError)]


def test_failing_chunk_adds_its_length_to_errors_and_processed():
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, failing_on_middle_chunk([]))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
        assert store.metrics() == (7, 7, 3)


def test_failing_chunk_fires_after_hooks_per_event_with_the_exception():
    after = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 3, failing_on_middle_chunk([]))
        store.on_after(lambda ctx, ev, res, exc: after.append((ev.data, type(exc) if exc else None)))
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
    assert sorted(after, key=lambda x: x[0]) == [
        (0, None), (1, None), (2, None), (3, ValueError), (4, ValueError), (5, ValueError), (6, None),
    ]


# --------------------------------------------------------------------------- hooks and results


def test_before_hooks_fire_once_per_event_of_a_chunk():
    before = []
    with EventStore(Dispatcher(), 16) as store:
        store.register_batch("p", 2, lambda ctx, events: None)
        store.on_before(lambda ctx, ev: before.append(ev.data))
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
    assert sorted(before) == [0, 1, 2, 3, 4]


def test_after_hooks_get_the_chunks_results_and_missing_results_are_empty():
    after = []
    with EventStore(Dispatcher(), 8) as store:
        store.register_batch("p", 3, lambda ctx, events: [Result("r0"), Result("r1")])
        store.on_after(lambda ctx, ev, res, exc: after.append((ev.data, res, exc)))
        for i in range(3):
            store.subscribe(Event("p", i))
        store.publish()
    assert sorted(after, key=lambda x: x[0]) == [
        (0, Result("r0"), None),
        (1, Result("r1"), None),
        (2, Result(), None),
    ]


def test_batch_handler_returning_none_gives_empty_results_to_after_hooks():
    after = []
    with EventStore(Dispatcher(), 8) as store:
        store.register_batch("p", 3, lambda ctx, events: None)
        store.on_after(lambda ctx, ev, res, exc: after.append((ev.data, res, exc)))
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        store.publish()
    assert sorted(after, key=lambda x: x[0]) == [(0, Result(), None), (1, Result(), None)]
