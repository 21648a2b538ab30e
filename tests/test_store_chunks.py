"""subscribe_many packs runs of one projection into shared slots ("chunks"): one pickle per slot.

Chunks are an encoding, never a change of meaning: order, room, drops, batches and dead
letters are per event exactly as with subscribe.
"""

from __future__ import annotations

import pytest

from busmp import (
    BLOCK, DROP_OLDEST, RETURN_ERROR, BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore,
)
from support import shm_blocks


def recording_dispatcher(*projections):
    d = Dispatcher()
    seen = []
    for p in projections:
        d.register(p, lambda ctx, ev: seen.append((ev.projection, ev.data)))
    return d, seen


def test_events_of_one_projection_share_slots():
    d, seen = recording_dispatcher("p")
    with EventStore(d, 1 << 10) as store:
        assert store.subscribe_many(Event("p", i) for i in range(300)) == 300
        assert len(store._bus.slots.pending) < 300 // 4  # far fewer slots than events
        assert store.stats().pending == 300  # events, not the slots that hold them
        assert store.publish() == 300
    assert seen == [("p", i) for i in range(300)]


def test_chunks_bigger_than_a_slot_live_in_arena_pages():
    d, _ = recording_dispatcher("p")
    seen = []
    with EventStore(d, 1 << 12, workers=1, start_method="fork") as store:
        store.on_after(lambda ctx, ev, result, error: seen.append(ev.data))
        store.subscribe_many(Event("p", i) for i in range(2000))
        ring = store._bus.slots
        assert len(ring.pending) <= 2000 // 200  # chunks of hundreds of events, not a slot's worth
        taken = ring.page_count - len(ring.free_pages)
        assert len(ring.pending) - 1 <= taken <= len(ring.pending)  # the first, sizing chunk may fit its slot
        store.publish()
        store.flush(timeout=30)
        stats = store.stats()
        assert stats.pages == ring.page_count and stats.free_pages == stats.pages  # every page given back
    assert sorted(seen) == list(range(2000))


def test_with_every_page_taken_chunks_are_cut_to_slot_size_not_spilled():
    d, _ = recording_dispatcher("p")
    seen = []
    with EventStore(d, 1 << 10, workers=1, start_method="fork", slot_size=128) as store:
        store.on_after(lambda ctx, ev, result, error: seen.append(ev.data))
        ring = store._bus.slots
        events = [Event("p", f"{i:08}" * 3) for i in range(1 << 10)]
        assert store.subscribe_many(events) == len(events)
        assert ring.free_pages == []  # the arena filled up, and the rest still went in
        assert shm_blocks(f"{ring.name}_x") == set()
        store.publish()
        store.flush(timeout=30)
    assert sorted(seen) == sorted(e.data for e in events)


def test_mixed_projections_keep_their_order():
    d, seen = recording_dispatcher("a", "b")
    events = [Event("a" if i % 7 < 4 else "b", i) for i in range(200)]
    with EventStore(d, 1 << 10) as store:
        store.subscribe_many(events)
        store.publish()
    assert seen == [(e.projection, e.data) for e in events]


def test_room_is_counted_in_events_not_slots():
    d, seen = recording_dispatcher("p")
    with EventStore(d, 8, RETURN_ERROR) as store:
        assert store.subscribe_many(Event("p", i) for i in range(20)) == 8
        with pytest.raises(BufferFull):
            store.subscribe(Event("p", 99))
        assert store.stats().free_slots == 0
        store.publish()
    assert [data for _, data in seen] == list(range(8))


def test_drop_oldest_drops_single_events_from_the_front_of_a_chunk():
    d, seen = recording_dispatcher("p")
    with EventStore(d, 8, DROP_OLDEST) as store:
        store.subscribe_many(Event("p", i) for i in range(8))
        store.subscribe(Event("p", 8))
        store.subscribe(Event("p", 9))
        assert store.stats().dropped == 2
        assert store.publish() == 8
    assert [data for _, data in seen] == list(range(2, 10))


def test_block_accepts_what_fits_then_times_out():
    d, seen = recording_dispatcher("p")
    with EventStore(d, 4, BLOCK) as store:
        assert store.subscribe_many([Event("p", i) for i in range(6)], timeout=0.05) == 4
        store.publish()
    assert [data for _, data in seen] == [0, 1, 2, 3]


def test_batch_chunks_cut_across_slots_exactly():
    d = Dispatcher()
    sizes = []
    with EventStore(d, 1 << 10) as store:
        store.register_batch("p", 7, lambda ctx, evs: sizes.append([e.data for e in evs]))
        store.subscribe_many(Event("p", i) for i in range(50))
        store.publish()
    assert [len(chunk) for chunk in sizes] == [7] * 7 + [1]
    assert [x for chunk in sizes for x in chunk] == list(range(50))


def test_a_failure_is_charged_to_its_event_not_its_chunk():
    d = Dispatcher()

    def picky(ctx, ev):
        if ev.data % 10 == 3:
            raise ValueError(ev.data)

    d.register("p", picky)
    with EventStore(d, 1 << 10, dlq=DeadLetterQueue()) as store:
        store.subscribe_many(Event("p", i) for i in range(100))
        store.publish()
        assert sorted(letter.event.data for letter in store.dlq.entries()) == list(range(3, 100, 10))
        assert store.metrics() == (100, 100, 10)


def test_an_unpicklable_event_inside_a_run_is_named():
    import threading

    d, _ = recording_dispatcher("p")
    with EventStore(d, 64) as store:
        bad = Event("p", threading.Lock(), id="the-bad-one")
        with pytest.raises(TypeError, match="the-bad-one"):
            store.subscribe_many([Event("p", 1), bad, Event("p", 2)])
        assert store.stats().pending == 0 and store.metrics().published == 0
