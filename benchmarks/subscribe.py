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
    f"N={N:,} events of the form `Event(\"p\", {{\"i\": i}})`; event construction is inside the timed loop for every contender.",
    "busmp only enqueues here (no publish); the peers call a no-op handler per event.",
]


def _busmp_subscribe() -> float:
    busmp = _common.load_busmp()
    Event = busmp.Event
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    store = _common.busmp_store(busmp, d, buffer_size=1 << 18, workers=0)
    try:
        sub = store.subscribe
        t0 = time.perf_counter()
        for i in range(N):
            sub(Event("p", {"i": i}))
        dt = time.perf_counter() - t0
        published = store.metrics().published
        if published != N:
            raise _common.Mismatch(f"busmp accepted {published} of {N} events")
        return dt
    finally:
        _common.close_busmp_store(store)


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
        (BASELINE, python_loop, "handler(None, {'i': i}) in a for loop"),
        ("pyee EventEmitter.emit", pyee_emit),
        ("blinker Signal.send", blinker_send),
    ]
