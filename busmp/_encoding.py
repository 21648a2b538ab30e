"""From the events a producer hands in to slot contents: checked, encoded, packed.

Every event is checked before anything is enqueued (an ``Event``, a hashable projection that
survives pickling, a ``Context`` or ``None``), so a bad one leaves the store unchanged.
``subscribe`` encodes one event per slot; ``subscribe_many`` packs runs of one projection into
*chunks*, one pickle per slot, sized from the pickle of the run before so that a chunk fits its
slot (a chunk that spills would cost a block of its own).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

import numpy as np

from ._codec import encode_chunk, encode_event
from ._dispatch import check_projection, survives_pickling
from ._event import Context, Event

__all__ = ["Encoded", "CHUNK_START", "CHUNK_MAX", "check_event", "encode_one", "encode_many"]

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
    routes, shared = _routes_of(events, ctx)
    chunks: list[tuple[Encoded, list[Event]]] = []
    size = min(CHUNK_START, max_events)
    fits = capacity * 7 // 8  # aim below the slot size: a spilled chunk costs a block
    for run_start, run_stop in [(0, len(events))] if shared else _runs(routes):
        route = routes[run_start]
        i = run_start
        while i < run_stop:
            j = min(run_stop, i + size)
            while True:
                members = events[i:j]
                payload, flags, buffers = (encode_event(members[0], ctx) if len(members) == 1
                                           else _encode_chunk(members, ctx, shared))
                per_event = max(1, len(payload) // len(members))
                size = max(1, min(CHUNK_MAX, max_events, fits // per_event))
                if buffers:
                    # Large buffers gain nothing from sharing a slot, and a reader that must hold
                    # several at once pays fresh pages for them: big events travel one by one.
                    fits = size = 1
                if len(members) == 1 or (len(payload) <= capacity and not buffers):
                    break
                j = i + min(size, len(members) - 1)  # too big for a slot: fewer events
            chunks.append(((payload, flags, route, buffers, len(members)), members))
            i = j
    return chunks


def _runs(routes: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of equal route words."""
    if not routes:
        return []
    words = np.fromiter(routes, dtype=np.int64, count=len(routes))
    cuts = [0, *(np.flatnonzero(words[1:] != words[:-1]) + 1).tolist(), len(routes)]
    return list(zip(cuts, cuts[1:]))


def _routes_of(events: list[Event], ctx: Context | None) -> tuple[list[int], bool]:
    """The route word (projection hash) of each event, checking every event on the way, and
    whether every event carries the very same projection object (the usual batch).

    The checks run per distinct type where they can, in C-level ``map`` loops: a batch of
    plain events with str keys costs a few passes over a list, not a function call per event.
    """
    _check_ctx(ctx)
    if set(map(type, events)) != {Event}:
        for event in events:
            check_event(event, ctx)
    if not events:
        return [], False
    projections = list(map(_projection_of, events))
    first = projections[0]
    if all(map(is_, projections, repeat(first))):
        check_event(events[0], ctx)  # one projection: one check, one hash
        return [hash(first)] * len(events), True
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
    return routes, False


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
