"""subscribe: N ``store.subscribe(Event(...))`` calls into a sync store (workers=0).

Only the enqueue is timed for busmp (no publish). The in-process peers have no separate
enqueue step, so they *deliver* each event to a no-op handler: they do strictly more work.
"""

from __future__ import annotations

import time
from typing import Any

from . import _common, _handlers

NAME = "subscribe"
TITLE = "subscribe only, sync store (workers=0), buffer_size=1<<18"
KIND = "rate"
UNIT = "events/s"
N = 200_000
WORK = N
BASELINE = "python loop"
NOTES = [
    f"N={N:,} events of the form `Event(\"p\", {{\"i\": i}})`; "
    "event construction is inside the timed loop for every contender.",
    "busmp only enqueues here (no publish); the peers call a no-op handler per event.",
    "busmp check_pickle=False: the same, without the pickle that proves an event could travel to a "
    "worker (a documented option for a purely in-process bus).",
    "python list.append: the events appended to a list, kept as a store keeps them until its publish: "
    "the floor of any in-process store. Most of its time (and of busmp's) is the cyclic GC walking the "
    "growing set of live events, which the peers, keeping nothing, never pay.",
]


def subscribe_each(store: Any, Event: Any) -> None:
    sub = store.subscribe
    for i in range(N):
        sub(Event("p", {"i": i}))


def _busmp_subscribe() -> float:
    return _common.time_sync_busmp(subscribe_each, N, publish=False)


def _busmp_subscribe_unchecked() -> float:
    return _common.time_sync_busmp(subscribe_each, N, publish=False, check_pickle=False)


def list_append() -> float:
    from busmp import Event

    kept: list[Any] = []
    append = kept.append
    t0 = time.perf_counter()
    for i in range(N):
        append(Event("p", {"i": i}))
    dt = time.perf_counter() - t0
    if len(kept) != N:
        raise _common.Mismatch(f"{len(kept)} of {N} events kept")
    return dt


def python_loop() -> float:
    h = _handlers.noop_handler
    t0 = time.perf_counter()
    for i in range(N):
        h(None, {"i": i})
    return time.perf_counter() - t0


def pyee_emit() -> float:
    pyee = _common.optional_import("pyee")
    ee = pyee.EventEmitter()
    ee.on("p", _handlers.noop)
    emit = ee.emit
    t0 = time.perf_counter()
    for i in range(N):
        emit("p", {"i": i})
    return time.perf_counter() - t0


def blinker_send() -> float:
    blinker = _common.optional_import("blinker")
    sig = blinker.Signal()
    sig.connect(_handlers.blinker_receiver)
    send = sig.send
    t0 = time.perf_counter()
    for i in range(N):
        send({"i": i})
    return time.perf_counter() - t0


def contenders() -> list[tuple[Any, ...]]:
    return [
        ("busmp subscribe (workers=0)", _busmp_subscribe),
        ("busmp subscribe, check_pickle=False (workers=0)", _busmp_subscribe_unchecked),
        (BASELINE, python_loop, "handler(None, {'i': i}) in a for loop"),
        ("python list.append (keeps every event)", list_append, "kept.append(Event('p', {'i': i}))"),
        ("pyee EventEmitter.emit", pyee_emit),
        ("blinker Signal.send", blinker_send),
    ]
