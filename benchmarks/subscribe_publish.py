"""subscribe_publish: subscribe N events, then one ``publish()`` with one no-op handler (workers=0)."""

from __future__ import annotations

import time
from typing import Any

from . import _common, _handlers
from .subscribe import N, blinker_send, pyee_emit, python_loop

NAME = "subscribe_publish"
TITLE = "subscribe N + one publish, one no-op handler, sync store (workers=0)"
KIND = "rate"
UNIT = "events/s"
WORK = N
BASELINE = "python loop"
NOTES = [
    f"N={N:,}; busmp: N x `subscribe(Event(\"p\", {{\"i\": i}}))` then one `publish()` that runs the handler inline.",
    "busmp subscribe_many: the N events are built in a list comprehension, inside the timed region, "
    "then one `subscribe_many` and one `publish()`.",
    "Peers deliver each event to the same no-op handler as it is produced.",
]


def _busmp_subscribe_publish() -> float:
    def produce(store: Any, Event: Any) -> None:
        sub = store.subscribe
        for i in range(N):
            sub(Event("p", {"i": i}))

    return _busmp_round(produce)


def _busmp_subscribe_many_publish() -> float:
    return _busmp_round(lambda store, Event: store.subscribe_many([Event("p", {"i": i}) for i in range(N)]))


def _busmp_round(produce: Any) -> float:
    """A sync store; ``produce(store, Event)`` and one ``publish()`` timed, then checked."""
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    store = _common.busmp_store(busmp, d, buffer_size=1 << 18, workers=0)
    try:
        before = _common.busmp_processed(store)
        t0 = time.perf_counter()
        produce(store, busmp.Event)
        taken = store.publish()
        dt = time.perf_counter() - t0
        if taken != N:
            raise _common.Mismatch(f"busmp publish() took {taken} of {N} events")
        _common.check_busmp_processed(store, before, N)
        return dt
    finally:
        _common.close_busmp_store(store)


def contenders() -> list[tuple[Any, ...]]:
    return [
        ("busmp subscribe+publish (workers=0)", _busmp_subscribe_publish),
        ("busmp subscribe_many+publish (workers=0)", _busmp_subscribe_many_publish),
        (BASELINE, python_loop, "handler(None, {'i': i}) in a for loop"),
        ("pyee EventEmitter.emit", pyee_emit),
        ("blinker Signal.send", blinker_send),
    ]
