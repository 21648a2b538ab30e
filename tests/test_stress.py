"""Stress, by property: random mixes of subscribe, subscribe_many and publish through a small
worker-mode ring that drops its oldest events, with payloads of every size (in a slot, in an
arena page, in a spill block). Every event is handled exactly once with its payload intact,
or counted as dropped; afterwards every slot and page is free and no shared memory is left."""

from __future__ import annotations

import hashlib
import os

from hypothesis import given, settings, strategies as st

from busmp import DROP_OLDEST, DeadLetterQueue, Dispatcher, Event, EventStore
from support import shm_blocks

SIZES = [8, 300, 3000, 20_000]  # a slot, a page, a page, a spill block (slot_size=128)


def payload(event_id: str, size: int) -> bytes:
    """``size`` bytes that only ``event_id`` produces: the handler can tell a damaged payload."""
    seed = hashlib.sha256(event_id.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def check_payload(ctx, event):
    if event.data != payload(event.id, len(event.data)):
        raise ValueError(f"event {event.id} arrived damaged")


ops = st.lists(st.one_of(
    st.tuples(st.just("subscribe"), st.sampled_from(SIZES), st.just(1)),
    st.tuples(st.just("subscribe_many"), st.sampled_from(SIZES), st.integers(1, 120)),
    st.tuples(st.just("publish"), st.just(0), st.just(0)),
), min_size=1, max_size=25)


@settings(max_examples=12, deadline=None)
@given(ops)
def test_every_event_is_handled_once_intact_or_counted_dropped(script):
    d = Dispatcher()
    d.register("p", check_payload)
    handled: list[str] = []
    failed: list[str] = []
    store = EventStore(d, 64, DROP_OLDEST, workers=2, slot_size=128, start_method="fork",
                       dlq=DeadLetterQueue())
    prefix = store._bus.ring.name.rsplit("_", 1)[0]
    store.on_after(lambda ctx, ev, result, error: (failed if error else handled).append(ev.id))
    subscribed: list[str] = []
    try:
        for op, size, count in script:
            if op == "publish":
                store.publish()
                continue
            events = []
            for _ in range(count):
                event_id = f"e{len(subscribed)}"
                subscribed.append(event_id)
                events.append(Event("p", payload(event_id, size), id=event_id))
            if op == "subscribe":
                store.subscribe(events[0])
            else:
                assert store.subscribe_many(events) == len(events)
        store.publish()
        store.flush(timeout=30)
        stats = store.stats()
    finally:
        store.drain(timeout=30)

    assert failed == []
    assert len(handled) == len(set(handled)), "an event was handled twice"
    assert set(handled) <= set(subscribed)
    assert len(handled) + stats.dropped == len(subscribed)
    assert stats.in_flight == 0 and stats.pending == 0
    assert stats.free_slots == stats.slots and stats.free_pages == stats.pages
    assert shm_blocks(prefix) == set()
