"""subscribe_publish: subscribe N events, then one ``publish()`` with one no-op handler (workers=0)."""

from __future__ import annotations

from typing import Any

from . import _common
from .subscribe import N, blinker_send, pyee_emit, python_loop, subscribe_each

NAME = "subscribe_publish"
TITLE = "subscribe N + one publish, one no-op handler, sync store (workers=0)"
KIND = "rate"
UNIT = "events/s"
WORK = N
BASELINE = "python loop"
NOTES = [
    f"N={N:,}; busmp: N x `subscribe(Event(\"p\", {{\"i\": i}}))` then one `publish()` that runs the handler inline.",
    "busmp check_pickle=False: the same, without the pickle that proves an event could travel to a worker.",
    "busmp subscribe_many: the N events are built in a list comprehension, inside the timed region, "
    "then one `subscribe_many` and one `publish()`.",
    "busmp subscribe_many, events built before timing: the same, with the N events built before "
    "the clock starts (as the worker-mode small_events workload does).",
    "Peers deliver each event to the same no-op handler as it is produced.",
]


def _busmp_subscribe_publish() -> float:
    return _common.time_sync_busmp(subscribe_each, N, publish=True)


def _busmp_subscribe_publish_unchecked() -> float:
    return _common.time_sync_busmp(subscribe_each, N, publish=True, check_pickle=False)


def _busmp_subscribe_many_publish() -> float:
    def produce(store: Any, Event: Any) -> None:
        store.subscribe_many([Event("p", {"i": i}) for i in range(N)])

    return _common.time_sync_busmp(produce, N, publish=True)


def _busmp_subscribe_many_prebuilt() -> float:
    Event = _common.load_busmp().Event
    events = [Event("p", {"i": i}) for i in range(N)]
    return _common.time_sync_busmp(lambda store, _: store.subscribe_many(events), N, publish=True)


def contenders() -> list[tuple[Any, ...]]:
    return [
        ("busmp subscribe+publish (workers=0)", _busmp_subscribe_publish),
        ("busmp subscribe+publish, check_pickle=False (workers=0)", _busmp_subscribe_publish_unchecked),
        ("busmp subscribe_many+publish (workers=0)", _busmp_subscribe_many_publish),
        ("busmp subscribe_many+publish, events built before timing (workers=0)", _busmp_subscribe_many_prebuilt),
        (BASELINE, python_loop, "handler(None, {'i': i}) in a for loop"),
        ("pyee EventEmitter.emit", pyee_emit),
        ("blinker Signal.send", blinker_send),
    ]
