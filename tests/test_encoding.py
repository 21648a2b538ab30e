"""Specification of encoding what producers hand in: every event checked, then packed into
chunks that fit the capacity they are given, in order, nothing lost or merged."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from busmp import Context, Event
from busmp._transport.codec import FLAG_CHUNK, decode_events
from busmp._transport.packing import CHUNK_MAX, encode_many

SHARED = ("orders", 7)  # one projection object, as a producer's batch usually carries


def decoded(chunks):
    out = []
    for (payload, flags, _route, buffers, count), members in chunks:
        events, _, _ = decode_events(payload, flags, buffers)
        assert len(events) == count == len(members)
        out.extend(events)
    return out


def same(a: Event, b: Event) -> bool:
    return a == b and type(a.projection) is type(b.projection)


projections = st.sampled_from([SHARED, SHARED, SHARED, "p", 1, True])
events = st.builds(Event, projections, st.one_of(st.integers(), st.text(max_size=30)),
                   st.sampled_from(["", "", "id-1"]), st.sampled_from([None, None, {"k": 1}]))


@settings(max_examples=60, deadline=None)
@given(st.lists(events, max_size=300), st.sampled_from([96, 480, 8192]), st.sampled_from([1, 7, 1 << 16]))
def test_chunks_hold_every_event_in_order_and_fit_their_capacity(batch, capacity, max_events):
    chunks = encode_many(batch, None, capacity, max_events)
    got = decoded(chunks)
    assert len(got) == len(batch) and all(same(a, b) for a, b in zip(got, batch))
    assert [e for _, members in chunks for e in members] == batch
    for (payload, _flags, route, _, count), members in chunks:
        assert count <= min(max_events, CHUNK_MAX)
        assert count == 1 or len(payload) <= capacity
        assert route == hash(members[0].projection)
        assert len({hash(e.projection) for e in members}) == 1  # a chunk is one route


def test_a_batch_of_one_projection_object_fills_chunks_up_to_the_capacity():
    batch = [Event(SHARED, i) for i in range(2000)]
    chunks = encode_many(batch, None, 8192, 1 << 16)
    assert all(flags & FLAG_CHUNK for (_, flags, *_), _ in chunks)
    assert max(count for (*_, count), _ in chunks) == CHUNK_MAX
    assert decoded(chunks) == batch


def test_a_batch_that_stops_sharing_its_projection_late_is_still_encoded_whole():
    batch = [Event(SHARED, i) for i in range(1000)] + [Event("other", -1)] + [Event(SHARED, i) for i in range(5)]
    got = decoded(encode_many(batch, None, 8192, 1 << 16))
    assert got == batch and got[1000].projection == "other"


@pytest.mark.parametrize("bad_at", [0, 600])
def test_a_bad_event_anywhere_rejects_the_batch_and_is_named(bad_at):
    batch: list = [Event(SHARED, i) for i in range(1000)]
    batch[bad_at] = Event(SHARED, lambda: None)  # picklable by cloudpickle: fine
    encode_many(batch, None, 8192, 1 << 16)
    batch[bad_at] = "not an event"
    with pytest.raises(TypeError, match="expected an Event, got str 'not an event'"):
        encode_many(batch, None, 8192, 1 << 16)
    batch[bad_at] = Event(SHARED, open)  # a builtin picklable by reference: fine
    encode_many(batch, None, 8192, 1 << 16)


def test_an_unpicklable_payload_is_named():
    import threading

    batch = [Event(SHARED, i) for i in range(500)]
    batch[321] = Event(SHARED, threading.Lock())
    with pytest.raises(TypeError, match=r"data=<unlocked _thread.lock"):
        encode_many(batch, None, 8192, 1 << 16)


def test_a_context_must_be_a_context():
    with pytest.raises(TypeError, match=r"ctx must be a busmp\.Context"):
        encode_many([Event(SHARED)], {"not": "a context"}, 8192, 16)  # type: ignore[arg-type]
    assert decoded(encode_many([Event(SHARED)], Context({"a": 1}), 8192, 16)) == [Event(SHARED)]
