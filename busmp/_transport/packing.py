"""From the events a producer hands in to slot contents: checked, encoded, packed.

Every event is checked before anything is enqueued (an ``Event``, a hashable projection that
survives pickling, a ``Context`` or ``None``), so a bad one leaves the store unchanged.
``subscribe`` encodes one event per slot; ``subscribe_many`` packs runs of one projection into
*chunks*, one pickle each, sized from the pickle of the chunk before so that a chunk fits the
capacity it is given (an arena page, see ``_ring``; a chunk that spills would cost a block of
its own). The usual batch, one projection object throughout, is checked and encoded chunk by
chunk while the chunk is in the CPU cache; any other batch takes the general path.
"""

from __future__ import annotations

import contextlib
import gc
import pickle
from collections.abc import Iterator
from itertools import pairwise, repeat
from operator import attrgetter, is_
from typing import Any

import numpy as np

from .codec import PROTOCOL, encode_chunk, encode_event
from .._dispatch import check_projection, survives_pickling
from .._event import Context, Event

__all__ = ["Encoded", "CHUNK_START", "CHUNK_MAX", "check_event", "check_pickles", "encode_one", "encode_many"]

#: An encoded slot: payload, codec flags, route word, out-of-band buffers, number of events.
Encoded = tuple[bytes, int, int, list[memoryview], int]
CHUNK_START = 16   # events per chunk subscribe_many tries first; adapted to the slot size
CHUNK_MAX = 256


def check_event(event: Event, ctx: Context | None) -> None:
    """Raise ``TypeError`` naming the problem if ``event`` (with ``ctx``) cannot be enqueued."""
    if not isinstance(event, Event):
        raise TypeError(f"expected an Event, got {type(event).__name__} {event!r}")
    projection = event.projection
    try:
        hash(projection)
        routable = type(projection).__eq__ is not object.__eq__ or survives_pickling(projection)
    except TypeError:
        routable = False
    if not routable:
        check_projection(projection, f"event {event!r} has projection")
    _check_ctx(ctx)


def check_pickles(event: Event, ctx: Context | None) -> None:
    """Raise ``TypeError`` naming the event if it could not travel to a worker (the pickle is
    made and dropped): sync mode's check, where the slot keeps the object itself."""
    try:
        pickle.dumps((event.projection, event.data, event.id, event.args, ctx), PROTOCOL)
    except Exception:
        encode_event(event, ctx, out_of_band=False)  # cloudpickle may manage; else it names the event


def encode_one(event: Event, ctx: Context | None, attempts: int = 0) -> Encoded:
    check_event(event, ctx)
    payload, flags, buffers = encode_event(event, ctx, attempts)
    return payload, flags, hash(event.projection), buffers, 1


def encode_many(events: list[Event], ctx: Context | None, capacity: int, max_events: int
                ) -> list[tuple[Encoded, list[Event]]]:
    """Check every event, then encode runs of one projection as chunks that fit ``capacity``
    bytes and hold at most ``max_events``; each chunk comes with the events it holds."""
    with _gc_paused():
        return _encode_many(events, ctx, capacity, max_events)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic collection while a batch is encoded: the batch's own short-lived tuples would
    trigger full passes over every object the caller holds (the events themselves included),
    which cost more than the encoding. Nothing here makes cycles; the pause is one call long."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _encode_many(events: list[Event], ctx: Context | None, capacity: int, max_events: int
                 ) -> list[tuple[Encoded, list[Event]]]:
    _check_ctx(ctx)
    shared = _encode_shared(events, ctx, capacity, max_events)
    if shared is not None:
        return shared
    routes = _routes_of(events, ctx)
    chunks: list[tuple[Encoded, list[Event]]] = []
    sizer = _Sizer(capacity, max_events)
    for run_start, run_stop in _runs(routes):
        i = run_start
        while i < run_stop:
            encoded, members = _next_chunk(events, i, run_stop, ctx, routes[i], False, sizer)
            chunks.append((encoded, members))
            i += len(members)
    return chunks


def _encode_shared(events: list[Event], ctx: Context | None, capacity: int, max_events: int
                   ) -> list[tuple[Encoded, list[Event]]] | None:
    """The usual batch, every event an ``Event`` with the very same projection object: checked
    and encoded chunk by chunk, while a chunk's events are still in the CPU cache (a pass over
    a whole batch of 100k events costs more than all the chunks' passes together). None as
    soon as an event does not fit that shape; the caller then takes the general path."""
    if not events or type(events[0]) is not Event:
        return None
    first = events[0].projection
    check_event(events[0], ctx)  # one projection: one check, one hash
    route, n = hash(first), len(events)
    chunks: list[tuple[Encoded, list[Event]]] = []
    sizer = _Sizer(capacity, max_events)
    i = 0
    while i < n:
        ahead = events[i: i + sizer.size]
        if set(map(type, ahead)) != {Event} or not all(map(is_, map(_projection_of, ahead), repeat(first))):
            return None
        encoded, members = _next_chunk(events, i, n, ctx, route, True, sizer)
        chunks.append((encoded, members))
        i += len(members)
    return chunks


class _Sizer:
    """How many events the next chunk should take, learnt from the pickle of the one before,
    so that a chunk fits ``capacity`` bytes (a chunk that spills would cost a block)."""

    def __init__(self, capacity: int, max_events: int) -> None:
        self.capacity, self.max_events = capacity, max_events
        self.size = min(CHUNK_START, max_events)
        self.fits = capacity * 7 // 8  # aim below the capacity

    def learn(self, payload_len: int, events: int, buffers: bool) -> None:
        per_event = max(1, payload_len // events)
        self.size = max(1, min(CHUNK_MAX, self.max_events, self.fits // per_event))
        if buffers:
            # Large buffers gain nothing from sharing a slot, and a reader that must hold
            # several at once pays fresh pages for them: big events travel one by one.
            self.fits = self.size = 1


def _next_chunk(events: list[Event], i: int, stop: int, ctx: Context | None, route: int, shared: bool,
                sizer: _Sizer) -> tuple[Encoded, list[Event]]:
    """The chunk that starts at ``events[i]`` (and ends by ``stop``), shrunk until it fits."""
    j = min(stop, i + sizer.size)
    while True:
        members = events[i:j]
        payload, flags, buffers = (encode_event(members[0], ctx) if len(members) == 1
                                   else _encode_chunk(members, ctx, shared))
        sizer.learn(len(payload), len(members), bool(buffers))
        if len(members) == 1 or (len(payload) <= sizer.capacity and not buffers):
            return (payload, flags, route, buffers, len(members)), members
        j = i + min(sizer.size, len(members) - 1)  # too big: fewer events


def _runs(routes: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal route words."""
    if not routes:
        return []
    words = np.fromiter(routes, dtype=np.int64, count=len(routes))
    cuts = [0, *(np.flatnonzero(words[1:] != words[:-1]) + 1).tolist(), len(routes)]
    return list(pairwise(cuts))


def _routes_of(events: list[Event], ctx: Context | None) -> list[int]:
    """The route word (projection hash) of each event, checking every event on the way.

    The checks run per distinct type where they can, in C-level ``map`` loops: a batch of
    plain events with str keys costs a few passes over a list, not a function call per event.
    """
    if set(map(type, events)) != {Event}:
        for event in events:
            check_event(event, ctx)
    projections = list(map(_projection_of, events))
    try:
        routes = list(map(hash, projections))
    except TypeError:
        for event in events:
            check_event(event, ctx)  # raises the error that names the event
        raise
    kinds: set[Any] = set(map(type, projections))
    identity_typed = {t for t in kinds if t.__eq__ is object.__eq__}
    if identity_typed:
        for event in events:
            if type(event.projection) in identity_typed:
                check_event(event, ctx)
    return routes


_projection_of = attrgetter("projection")


def _encode_chunk(members: list[Event], ctx: Context | None, shared: bool) -> tuple[bytes, int, list[memoryview]]:
    try:
        return encode_chunk(members, ctx, shared)
    except Exception:
        for event in members:  # find the culprit, for an error that names it
            encode_event(event, ctx)
        raise


def _check_ctx(ctx: Context | None) -> None:
    if ctx is not None and not isinstance(ctx, Context):
        raise TypeError(f"ctx must be a busmp.Context or None, got {type(ctx).__name__}")
