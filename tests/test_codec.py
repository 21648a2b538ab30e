"""Specification of the codec: what goes into a slot comes out field for field."""

from __future__ import annotations

import pickle
import threading
from enum import Enum

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from busmp import Context, Event
from busmp._transport.codec import (
    FLAG_CHUNK, FLAG_CLOUDPICKLE, FLAG_ENVELOPE, FLAG_MIXED, decode_events, encode_chunk, encode_event,
)


class Color(Enum):
    RED = 1


def same_fields(a: Event, b: Event) -> bool:
    """Equal and of the same types: 1, True and 1.0 are equal but not the same projection."""
    fields = ("projection", "data", "id", "args")
    return a == b and all(type(getattr(a, f)) is type(getattr(b, f)) for f in fields)


def round_trip(events, ctx=None):
    payload, flags, buffers = encode_chunk(events, ctx)
    decoded, got_ctx, attempts = decode_events(payload, flags, buffers)
    return decoded, got_ctx, attempts, flags


projections = st.one_of(st.sampled_from(["p", "q", 1, True, 1.0, ("t", 1), Color.RED, None]), st.text(max_size=3))
datas = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers()))
ids = st.one_of(st.just(""), st.text(max_size=4))
args = st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
events = st.builds(Event, projections, datas, ids, args)


@settings(max_examples=100, deadline=None)
@given(st.lists(events, min_size=1, max_size=40))
def test_a_chunk_comes_back_field_for_field(batch):
    decoded, ctx, attempts, _ = round_trip(batch)
    assert len(decoded) == len(batch)
    assert all(same_fields(a, b) for a, b in zip(decoded, batch))
    assert (ctx, attempts) == (None, 0)


def test_a_chunk_of_one_shared_projection_stores_it_once():
    batch = [Event("orders", {"i": i}) for i in range(50)]
    payload, flags, _ = encode_chunk(batch)
    assert flags & FLAG_CHUNK and not flags & FLAG_MIXED
    assert pickle.dumps(["orders"] * 50, 5) not in payload
    assert payload.count(b"orders") == 1


def test_equal_but_different_projections_are_not_merged():
    batch = [Event(1), Event(True), Event(1.0)]  # one hash, three projections
    decoded, _, _, flags = round_trip(batch)
    assert flags & FLAG_MIXED
    assert [type(e.projection) for e in decoded] == [int, bool, float]


def test_ids_and_args_that_are_only_falsy_are_kept():
    batch = [Event("p", id=0), Event("p", args={}), Event("p")]  # type: ignore[arg-type]
    decoded, _, _, _ = round_trip(batch)
    assert decoded[0].id == 0 and type(decoded[0].id) is int
    assert decoded[1].args == {} and decoded[2].args is None and decoded[2].id == ""


def test_decoded_events_are_real_frozen_events():
    (event,), _, _, _ = round_trip([Event("p", 1)])
    assert type(event) is Event
    with pytest.raises(AttributeError):
        event.data = 2  # type: ignore[misc]
    assert hash(event) == hash(Event("p", 1))


def test_a_context_travels_in_an_envelope():
    ctx = Context({"user": "ada"}, deadline=123.0)
    decoded, got, attempts, flags = round_trip([Event("p", 1), Event("p", 2)], ctx)
    assert flags & FLAG_ENVELOPE and got == ctx and attempts == 0
    assert [e.data for e in decoded] == [1, 2]


def test_large_arrays_travel_out_of_band_and_come_back_equal():
    array = np.arange(1 << 15, dtype=np.float64)  # 256 KiB
    payload, flags, buffers = encode_event(Event("p", array))
    assert len(buffers) == 1 and len(payload) < 1024
    (event,), _, _ = decode_events(payload, flags, buffers)
    assert np.array_equal(event.data, array)


def test_what_plain_pickle_refuses_goes_through_cloudpickle():
    payload, flags, _ = encode_event(Event("p", lambda x: x + 1))
    assert flags & FLAG_CLOUDPICKLE
    (event,), _, _ = decode_events(payload, flags)
    assert event.data(1) == 2


def test_an_event_that_cannot_be_pickled_is_named():
    with pytest.raises(TypeError, match=r"Event\(projection='p'.*cannot be pickled"):
        encode_event(Event("p", threading.Lock()))
