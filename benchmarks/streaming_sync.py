"""streaming_sync: sync mode (workers=0) used one event at a time: subscribe + publish per event."""

from __future__ import annotations

import time
from typing import Any

from . import _common, _handlers
from .subscribe import N, blinker_send, pyee_emit, python_loop

NAME = "streaming_sync"
TITLE = "one event at a time in sync mode: subscribe + publish per event, one no-op handler (workers=0)"
KIND = "rate"
UNIT = "events/s"
WORK = N
BASELINE = "pyee EventEmitter.emit"
NOTES = [
    f"N={N:,}; busmp: `subscribe(Event(\"p\", {{\"i\": i}})); publish()` for each event, the handler "
    "running inline in publish(); the peers deliver each event to the same no-op handler as it is produced.",
    "busmp check_pickle=False: the same, with the pickle that proves an event could travel to a "
    "worker skipped (a documented option for a purely in-process bus).",
    "Event construction is inside the timed loop for every contender.",
]


def _publish_each(store: Any, Event: Any) -> None:
    subscribe, publish = store.subscribe, store.publish
    for i in range(N):
        subscribe(Event("p", {"i": i}))
        publish()


def _busmp(**options: Any) -> float:
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    store = _common.busmp_store(busmp, d, buffer_size=1 << 18, workers=0, **options)
    try:
        before = _common.busmp_processed(store)
        t0 = time.perf_counter()
        _publish_each(store, busmp.Event)
        dt = time.perf_counter() - t0
        _common.check_busmp_processed(store, before, N)
        return dt
    finally:
        _common.close_busmp_store(store)


def contenders() -> list[tuple[Any, ...]]:
    return [
        ("busmp subscribe+publish per event (workers=0)", _busmp),
        ("busmp subscribe+publish per event, check_pickle=False (workers=0)",
         lambda: _busmp(check_pickle=False)),
        (BASELINE, pyee_emit),
        ("blinker Signal.send", blinker_send),
        ("python loop", python_loop, "handler(None, {'i': i}) in a for loop"),
    ]
