"""The open slot (worker mode): consecutive single ``subscribe`` calls of one projection object
gather in one slot until a publish (or any other write) seals them into a chunk, as
``subscribe_many`` would have packed them (see ``Bus._gather``). Room, drops, ``stats()``,
hooks and drain still see the events one by one."""

from __future__ import annotations

from busmp import DROP_OLDEST, DeadLetterQueue, Dispatcher, Event, EventStore, Result, StoreClosed

FLUSH = 30.0


def noop(ctx, event):
    return None


def store_with(handled: list[object], size: int = 1 << 10, **options: object) -> EventStore:
    d = Dispatcher()
    d.register("p", noop)
    d.register("q", noop)
    store = EventStore(d, size, workers=2, start_method="fork", **options)
    store.on_after(lambda ctx, ev, result, error: handled.append((ev.projection, ev.data, error)))
    return store


def slots_taken(store: EventStore) -> int:
    table = store._bus.slots
    return table.slot_count - len(table.free)


def test_single_subscribes_gather_in_few_slots_and_each_is_handled_once_intact():
    handled: list[object] = []
    with store_with(handled) as store:
        for i in range(300):
            store.subscribe(Event("p", {"i": i, "pad": "x" * (i % 7)}))
        stats = store.stats()
        assert stats.pending == 300 and stats.free_slots == stats.slots - 300  # room is counted in events
        assert slots_taken(store) < 300 // 4  # but they share slots
        assert store.publish() == 300
        store.flush(timeout=FLUSH)
    assert sorted(data["i"] for _, data, _ in handled) == list(range(300))
    assert all(data["pad"] == "x" * (data["i"] % 7) and error is None for _, data, error in handled)


def test_another_projection_or_a_context_closes_the_open_slot_and_order_of_pending_holds():
    handled: list[object] = []
    with store_with(handled) as store:
        expected = []
        for i in range(60):
            projection = "p" if (i // 5) % 2 else "q"
            store.subscribe(Event(projection, i))
            expected.append((projection, i))
        store.subscribe_many([Event("p", 100), Event("p", 101)])
        store.subscribe(Event("p", 102))
        assert store.publish() == 63
        store.flush(timeout=FLUSH)
    expected += [("p", 100), ("p", 101), ("p", 102)]
    assert sorted(h[:2] for h in handled) == sorted(expected)


def test_drop_oldest_drops_from_the_open_slot_one_event_at_a_time():
    handled: list[object] = []
    with store_with(handled, size=8, policy=DROP_OLDEST) as store:
        for i in range(20):
            store.subscribe(Event("p", i))
        stats = store.stats()
        assert (stats.pending, stats.dropped) == (8, 12)
        store.publish()
        store.flush(timeout=FLUSH)
    assert sorted(data for _, data, _ in handled) == list(range(12, 20))  # the oldest went first


def test_drain_turns_gathered_events_into_dead_letters():
    handled: list[object] = []
    store = store_with(handled, dlq=DeadLetterQueue())
    for i in range(10):
        store.subscribe(Event("p", i))
    store.drain(timeout=FLUSH)
    letters = store.dlq.entries()
    assert sorted(letter.event.data for letter in letters) == list(range(10))
    assert all(isinstance(letter.error, StoreClosed) for letter in letters)
    assert handled == []


def test_a_submit_between_single_subscribes_is_handled_with_them():
    handled: list[object] = []
    with store_with(handled) as store:
        for i in range(5):
            store.subscribe(Event("p", i))
        future = store.submit(Event("p", 5))  # seals the open slot, publishes all six
        assert future.result(timeout=FLUSH) == [Result("", None)]  # noop's result: none
        assert store.stats().pending == 0  # the five before it were published with it
        for i in range(6, 9):
            store.subscribe(Event("p", i))
        store.publish()
        store.flush(timeout=FLUSH)
    assert sorted(data for _, data, _ in handled) == list(range(9))


def _refuse_to_load():
    raise ValueError("this payload cannot be unpickled")


class FailsOnLoad:
    """Pickles fine in the parent; unpickling it (in a worker) raises."""

    def __reduce__(self):
        return (_refuse_to_load, ())


def test_an_event_of_a_run_that_cannot_be_decoded_is_charged_alone():
    """A run is decoded in one pass; when an event of it cannot be, the events are decoded one
    by one, so only that one is a dead letter (as a slot of its own would be)."""
    handled: list[object] = []
    d = Dispatcher()
    d.register("p", noop)
    store = EventStore(d, workers=1, start_method="fork", dlq=DeadLetterQueue())
    store.on_after(lambda ctx, ev, result, error: handled.append((ev.data, error)))
    with store:
        for i in range(12):
            store.subscribe(Event("p", FailsOnLoad() if i == 5 else i, id=f"e{i}"))
        assert slots_taken(store) == 1  # all twelve in one run
        store.publish()
        store.flush(timeout=FLUSH)
        letters = store.dlq.entries()
        metrics = store.metrics()
    assert sorted(data for data, error in handled if error is None) == [i for i in range(12) if i != 5]
    assert [letter.event.projection for letter in letters] == ["busmp.undecodable"]
    assert isinstance(letters[0].error, ValueError) and "cannot be unpickled" in str(letters[0].error)
    assert (metrics.processed, metrics.errors) == (12, 1)


def test_events_of_a_checked_projection_that_plain_pickle_cannot_take_alone_take_the_general_path():
    """After a first plain event, an event of the same projection object is pickled in one step
    and gathered; one that needs more (a large buffer out of band, cloudpickle, a slot of its
    own) is encoded as before, and one that cannot travel is refused, the store unchanged."""
    import threading

    import numpy as np

    handled: list[object] = []
    with store_with(handled, dlq=DeadLetterQueue()) as store:
        store.subscribe(Event("p", 0))  # the projection object is checked here
        big = np.arange(1 << 17, dtype=np.int64)  # 1 MiB: out of band
        store.subscribe(Event("p", big))
        store.subscribe(Event("p", lambda: 7))  # only cloudpickle takes a lambda
        store.subscribe(Event("p", b"y" * 3000))  # bigger than a slot
        store.subscribe(Event("p", 4))
        before = store.stats().pending
        try:
            store.subscribe(Event("p", threading.Lock()))
        except TypeError as exc:
            assert "cannot be pickled" in str(exc)
        else:
            raise AssertionError("an event holding a lock was accepted")
        assert store.stats().pending == before == 5
        assert store.publish() == 5
        store.flush(timeout=FLUSH)
    data = {type(d).__name__: d for _, d, _ in handled}
    assert len(handled) == 5 and all(error is None for _, _, error in handled)
    assert np.array_equal(data["ndarray"], big) and data["function"]() == 7 and data["bytes"] == b"y" * 3000
    assert sorted(d for _, d, _ in handled if isinstance(d, int)) == [0, 4]
