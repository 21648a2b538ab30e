"""The slot ring: its shared-memory layout, slots, overflow blocks and release."""

from __future__ import annotations

import gc
import itertools
import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from busmp import Dispatcher, Event, EventStore
from busmp._transport.codec import FLAG_CLOUDPICKLE, decode_event, encode_event
from busmp._transport.slots import Slots
from busmp._transport.ring import PAGE_SIZE, header_dtype, SLOT_HEADER_SIZE, CorruptSlot, SlotRing
from support import shm_blocks


def new_slots(*args, **kwargs):
    """A ring with its parent-side allocator, as a store owns it."""
    return Slots(SlotRing.create(*args, **kwargs))


@pytest.fixture
def ring():
    r = new_slots(8, 128)
    yield r
    r.close()


def test_header_is_a_numpy_structured_array_with_cursors_on_their_own_cache_lines(ring):
    assert isinstance(ring.ring.header, np.ndarray)
    dtype = header_dtype()
    assert ring.ring.header.dtype == dtype and dtype.names is not None
    cursors = ["written", "dispatched", "released", "dropped"]
    offsets = [dtype.fields[name][1] for name in cursors]
    assert all(offset % 64 == 0 for offset in offsets)
    assert [b - a for a, b in itertools.pairwise(offsets)] == [64, 64, 64]
    assert offsets[0] >= 64  # not sharing a line with the geometry words either
    assert dtype.itemsize == 64 * (len(cursors) + 1)


def test_geometry_is_readable_by_another_mapping(ring):
    other = SlotRing.attach(ring.name)
    try:
        assert (other.slot_count, other.slot_size) == (8, 128)
        assert not other.owner
    finally:
        other.close()
    assert os.path.exists(f"/dev/shm/{ring.name}")  # a reader's close does not unlink


def test_slot_round_trip_with_sequence_check(ring):
    payload, flags, _ = encode_event(Event("p", {"x": 1}, id="e1"))
    ring.write(3, seq=42, route=7, payload=payload, flags=flags)
    assert decode_event(*ring.read(3, seq=42))[0] == Event("p", {"x": 1}, id="e1")
    assert ring.ring.seq_of(3) == 42
    assert ring.ring.routes(np.array([3]))[0] == 7
    with pytest.raises(CorruptSlot, match="expected #43"):
        ring.read(3, seq=43)


def test_damaged_length_is_reported_not_read_past_the_slot(ring):
    payload, flags, _ = encode_event(Event("p"))
    ring.write(0, 1, 0, payload, flags)
    off = ring.ring.slot_offset(0)
    ring.ring._buf[off + 16: off + 20] = (10_000).to_bytes(4, "little")
    with pytest.raises(CorruptSlot, match="payload bytes"):
        ring.read(0)


def spill_blocks(ring) -> set[str]:
    return shm_blocks(f"{ring.name}_x")


def test_event_larger_than_a_slot_spills_into_a_block_that_is_reused_then_unlinked():
    ring = new_slots(8, 128)
    big = Event("p", b"x" * 10_000)
    payload, flags, buffers = encode_event(big)
    assert len(payload) > ring.capacity
    ring.write(2, 5, 0, payload, flags, buffers)
    (block,) = spill_blocks(ring)
    got = ring.read(2, seq=5)
    assert decode_event(*got)[0] == big
    ring.release([2])
    ring.write(3, 6, 0, payload, flags, buffers)
    assert spill_blocks(ring) == {block}  # the released block was reused, not re-created
    ring.close()
    assert spill_blocks(ring) == set()


def test_payload_bigger_than_a_slot_but_not_a_page_takes_an_arena_page_not_a_block():
    ring = new_slots(8, 128)
    assert ring.page_count >= 4 and ring.chunk_capacity == PAGE_SIZE
    event = Event("p", b"z" * 5000)
    payload, flags, buffers = encode_event(event)
    assert ring.capacity < len(payload) <= PAGE_SIZE
    free = len(ring.free_pages)
    ring.write(1, 9, 0, payload, flags, buffers)
    reader = SlotRing.attach(ring.name)
    try:
        assert decode_event(*reader.read(1, seq=9))[0] == event  # another mapping reads the page
        assert spill_blocks(ring) == set() and len(ring.free_pages) == free - 1
        ring.release([1])
        assert len(ring.free_pages) == free
    finally:
        reader.close()
        ring.close()


def test_when_every_page_is_taken_a_big_payload_spills():
    ring = new_slots(8, 128)
    payload, flags, buffers = encode_event(Event("p", b"z" * 5000))
    for slot in range(ring.page_count):
        ring.write(slot, slot + 1, 0, payload, flags, buffers)
    assert ring.free_pages == [] and ring.would_spill(payload, buffers)
    ring.write(7, 8, 0, payload, flags, buffers)
    assert len(spill_blocks(ring)) == 1
    assert decode_event(*ring.read(7, seq=8))[0].data == b"z" * 5000
    ring.close()


def test_a_damaged_page_reference_is_reported_not_followed():
    ring = new_slots(8, 128)
    payload, flags, buffers = encode_event(Event("p", b"z" * 5000))
    ring.write(0, 1, 0, payload, flags, buffers)
    off = ring.ring.slot_offset(0) + SLOT_HEADER_SIZE
    ring.ring._buf[off: off + 4] = (ring.page_count + 3).to_bytes(4, "little")
    try:
        with pytest.raises(CorruptSlot, match="points at page"):
            ring.read(0)
    finally:
        ring.close()


def test_numpy_buffers_travel_out_of_band_and_come_back_as_private_copies():
    ring = new_slots(8, 128)
    array = np.arange(100_000, dtype=np.float64)
    payload, flags, buffers = encode_event(Event("arr", array))
    assert len(buffers) == 1 and len(payload) < 1000  # the 800 kB went out of band
    ring.write(0, 1, 0, payload, flags, buffers)
    reader = SlotRing.attach(ring.name)
    try:
        event = decode_event(*reader.read(0, seq=1))[0]
        assert np.array_equal(event.data, array)
        ring.release([0])
        ring.write(0, 2, 0, *encode_event(Event("arr", np.zeros(100_000))))
        assert np.array_equal(event.data, array)  # not a view of the reused block
    finally:
        reader.close()
        ring.close()


def test_small_buffers_stay_in_band():
    payload, _, buffers = encode_event(Event("arr", np.arange(10)))
    assert buffers == [] and np.array_equal(pickle.loads(payload)[1], np.arange(10))


def test_slot_size_below_the_minimum_is_refused():
    with pytest.raises(ValueError, match="slot_size"):
        SlotRing.create(4, SLOT_HEADER_SIZE + 32)


def test_free_list_is_a_stack_so_warm_slots_are_reused_first(ring):
    taken = [ring.take(1) for _ in range(8)]
    assert taken == list(range(8)) and ring.free_events == 0
    assert ring.release([5, 2]) == 2
    assert [ring.take(1), ring.take(1)] == [2, 5]


def test_room_is_counted_in_events_and_drop_oldest_eats_a_chunk_from_the_front(ring):
    chunk = ring.take(5)  # a chunk of five events in one slot
    ring.pending.append(chunk)
    assert ring.free_events == 3 and len(ring.free) == 7
    assert ring.drop_oldest_pending()
    assert (ring.first[chunk], ring.live[chunk], ring.free_events) == (1, 4, 4)
    for _ in range(4):
        assert ring.drop_oldest_pending()
    assert not ring.pending and ring.free_events == 8 and len(ring.free) == 8
    assert not ring.drop_oldest_pending()


def test_cloudpickle_only_when_plain_pickle_cannot():
    _, plain, _ = encode_event(Event("p", {"a": 1}))
    _, fancy, _ = encode_event(Event("p", lambda: 1))
    assert plain & FLAG_CLOUDPICKLE == 0 and fancy & FLAG_CLOUDPICKLE


def store_segments(store: EventStore) -> str:
    return f"/dev/shm/{store._bus.ring.name}"


def test_store_segment_unlinked_after_drain():
    store = EventStore(Dispatcher(), 4)
    path = store_segments(store)
    assert os.path.exists(path)
    store.drain()
    assert not os.path.exists(path)


def test_store_segment_unlinked_when_garbage_collected_without_drain():
    store = EventStore(Dispatcher(), 4)
    path = store_segments(store)
    store.subscribe(Event("p", b"y" * (PAGE_SIZE + 1000)))  # a spill block too
    del store
    gc.collect()
    assert not os.path.exists(path)
    assert shm_blocks(os.path.basename(path)) == set()


def test_store_counters_reach_the_shared_header_at_publish():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 4) as store:
        for i in range(6):
            store.subscribe(Event("p", i))
        store.publish()
        header = store._bus.ring.header
        assert (int(header["written"]), int(header["dispatched"]), int(header["dropped"])) == (6, 4, 2)


def test_events_travel_as_protocol_5_pickles_of_their_fields():
    event = Event("p", {"k": 1}, id="e", args={"a": 2})
    payload, flags, _ = encode_event(event)
    assert payload[:2] == b"\x80\x05"
    assert pickle.loads(payload) == ("p", {"k": 1}, "e", {"a": 2})
    assert decode_event(payload, flags) == (event, None, 0)


# --------------------------------------------------------------------------- shared-memory room


class FakeShm:
    """What os.statvfs reports for a small /dev/shm: 4 MiB in all, ``free`` MiB free."""

    def __init__(self, free_mib):
        self.f_frsize, self.f_blocks, self.f_bavail = 4096, 1024, free_mib * 256


def small_shm(monkeypatch, free_mib):
    from busmp._transport import shm as _shm

    real = os.statvfs
    monkeypatch.setattr(_shm.os, "statvfs", lambda path: FakeShm(free_mib) if path == _shm.SHM_DIR else real(path))


def test_a_ring_bigger_than_all_shared_memory_is_refused_with_the_fix(monkeypatch):
    small_shm(monkeypatch, free_mib=4)
    with pytest.raises(ValueError, match=r"2 MiB page arena, needs 10 MiB .* holds only 4 MiB; "
                                         r"lower buffer_size or slot_size"):
        SlotRing.create(1 << 14, 512)
    SlotRing.create(1 << 10, 512).close()  # 512 KiB fits


def test_an_event_that_needs_more_shared_memory_than_is_free_is_refused_and_changes_nothing(monkeypatch):
    from busmp import BufferFull, DeadLetterQueue

    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 16, workers=1, start_method="fork", dlq=DeadLetterQueue()) as store:
        seen = []
        store.on_after(lambda ctx, ev, result, error: seen.append((len(ev.data), error)))
        small_shm(monkeypatch, free_mib=1)
        with pytest.raises(BufferFull, match=r"2\.0 MiB shared-memory block .* 1\.0 MiB free"):
            store.subscribe(Event("p", np.zeros(1 << 18)))  # 2 MiB out of band
        assert store.stats().pending == 0 and store.metrics().published == 0
        store.subscribe(Event("p", np.zeros(1 << 10)))  # 8 KiB: fits
        store.publish()
        store.flush(timeout=10)
        assert seen == [(1 << 10, None)] and store.metrics() == (1, 1, 0)


# --------------------------------------------------------------------------- pages, at random


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["write", "release", "drop"]),
                          st.sampled_from([10, 200, 3000, PAGE_SIZE, 9000]), st.integers(0, 7)), max_size=60))
def test_pages_and_blocks_are_never_shared_lost_or_misread(ops):
    ring = new_slots(8, 128)
    held: dict[int, bytes] = {}  # slot -> what it should read back
    try:
        for op, size, pick in ops:
            if op == "write" and ring.free:
                slot = ring.take(1)
                data = bytes([slot]) * size
                payload, flags, buffers = encode_event(Event("p", data))
                ring.write(slot, slot + 1, 0, payload, flags, buffers)
                ring.pending.append(slot)
                held[slot] = data
            elif op == "release" and held:
                slot = sorted(held)[pick % len(held)]
                if slot in ring.pending:
                    ring.pending.remove(slot)
                ring.release([slot])
                del held[slot]
            elif op == "drop" and ring.pending:
                oldest = ring.pending[0]
                assert ring.drop_oldest_pending()  # a one-event slot: dropped whole, page and all
                del held[oldest]
            for slot, data in held.items():
                assert decode_event(*ring.read(slot, seq=slot + 1))[0].data == data
            assert len(ring.free_pages) + len(ring._paged) == ring.page_count
            assert len(set(ring._paged.values())) == len(ring._paged)  # no page serves two slots
        ring.release(list(held))
        assert sorted(ring.free_pages) == list(range(ring.page_count)) and not ring._overflow
    finally:
        ring.close()
