"""Stress, by property: random mixes of subscribe, subscribe_many and publish through a small
worker-mode ring that drops its oldest events, with payloads of every size (in a slot, in an
arena page, in a spill block); and streams of one event at a time from several threads, under
every policy, with a worker killed midway. Every event is handled exactly once with its payload
intact, or accounted for (dropped, refused, a dead letter); afterwards every slot and page is
free and no shared memory is left."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time

from hypothesis import given, settings, strategies as st

from busmp import DROP_OLDEST, BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore, OverrunPolicy
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


streams = st.tuples(
    st.integers(1, 4),                                    # producer threads
    st.integers(50, 400),                                 # events per thread
    st.sampled_from([DROP_OLDEST, "BLOCK", "RETURN_ERROR"]),
    st.sampled_from([0.0, 0.0002]),                       # handler time: idle or busy workers
    st.booleans(),                                        # a worker killed midway
)


@settings(max_examples=10, deadline=None)
@given(streams)
def test_streaming_one_event_at_a_time_from_threads_handles_each_once_or_accounts_for_it(case):
    """subscribe + publish per event, from several threads at once, under every policy, while
    the workers are idle or busy (their waiting one-event jobs merge) and while one dies: every
    event is handled once with its payload intact, or is a dead letter, a drop or a refusal."""
    threads, per_thread, policy, work, kill = case
    policy = policy if isinstance(policy, OverrunPolicy) else OverrunPolicy[policy]

    def handler(ctx, event):
        check_payload(ctx, event)
        if work:
            time.sleep(work)

    d = Dispatcher()
    d.register("p", handler)
    handled: list[str] = []
    refused: list[str] = []
    store = EventStore(d, 256, policy, workers=2, start_method="fork", dlq=DeadLetterQueue())
    store.on_after(lambda ctx, ev, result, error: handled.append(ev.id) if error is None else None)

    def produce(t: int) -> None:
        for i in range(per_thread):
            event_id = f"t{t}-{i}"
            try:
                store.subscribe(Event("p", payload(event_id, 40), id=event_id), timeout=30)
            except BufferFull:
                refused.append(event_id)
            store.publish()

    try:
        workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        if kill:
            time.sleep(0.01)
            pid = store.stats().worker_pids[0]
            if pid:  # 0 while it starts: then nothing to kill
                os.kill(pid, signal.SIGKILL)
        for w in workers:
            w.join()
        store.flush(timeout=30)
        stats = store.stats()
        letters = store.dlq.entries()
    finally:
        store.drain(timeout=30)

    subscribed = threads * per_thread
    dead = [letter.event.id for letter in letters]
    assert len(handled) == len(set(handled)), "an event was handled twice"
    assert not set(handled) & set(dead), "an event was both handled and a dead letter"
    assert all(type(letter.error).__name__ == "WorkerCrashed" for letter in letters)
    assert len(handled) + len(dead) + stats.dropped + len(refused) == subscribed
    assert stats.in_flight == 0 and stats.pending == 0 and stats.free_slots == stats.slots
