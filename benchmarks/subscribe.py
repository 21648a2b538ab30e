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
]


def subscribe_each(store: Any, Event: Any) -> None:
    sub = store.subscribe
    for i in range(N):
        sub(Event("p", {"i": i}))


def _busmp_subscribe() -> float:
    return _common.time_sync_busmp(subscribe_each, N, publish=False)


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
