"""streaming: events used one at a time, as an event bus is used, against the bulk path.

Every worker-mode contender runs 2 worker processes; pools and stores are created and warmed
up before the clock starts, and the clock stops when the last event has been handled.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from . import _common, _handlers, small_events

NAME = "streaming"
TITLE = "one event at a time: subscribe (+ publish) per event, 2 worker processes, no-op handler"
KIND = "rate"
UNIT = "events/s"
N = 50_000
WORK = N
WORKERS = 2
THREADS = 4
BASELINE = "multiprocessing.Queue put per event"
NOTES = [
    f"N={N:,} events `{{\"i\": i, \"name\": \"x\"}}` built before timing; busmp buffer_size=1<<16, "
    f"{WORKERS} workers; every busmp run ends with `flush()` and checks that all N were handled.",
    "busmp subscribe+publish per event: `subscribe(ev); publish()` for each event, the pattern of "
    "GoEventBus's examples.",
    f"busmp from {THREADS} threads: the same pattern from {THREADS} producer threads at once, "
    f"N/{THREADS} events each, into one store.",
    "busmp subscribe per event, one publish: N `subscribe(ev)` calls, then one `publish()`.",
    "busmp subscribe_many + publish (bulk): the bulk path, for reference.",
    "multiprocessing.Queue: the parent puts every item; one consumer process gets them until a sentinel.",
]

def items() -> list[dict[str, Any]]:
    return small_events.items()[:N]  # the same payloads as the bulk workload, fewer of them


def _busmp_run(produce: Any) -> float:
    """A warmed-up store with 2 workers; ``produce(store, events)`` then ``flush()``, timed."""
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    events = [busmp.Event("p", p) for p in items()]
    store = None
    try:
        store = _common.busmp_store(busmp, d, buffer_size=1 << 16, workers=WORKERS)
        store.subscribe(busmp.Event("p", {"i": -1}))
        store.publish()
        store.flush(timeout=_common.WAIT_TIMEOUT)
        before = _common.busmp_processed(store)
        t0 = time.perf_counter()
        produce(store, events)
        store.flush(timeout=_common.WAIT_TIMEOUT)
        dt = time.perf_counter() - t0
        _common.check_busmp_processed(store, before, len(events))
        return dt
    finally:
        _common.close_busmp_store(store)


def _publish_each(store: Any, events: list[Any]) -> None:
    subscribe, publish = store.subscribe, store.publish
    for ev in events:
        subscribe(ev)
        publish()


def _threads(store: Any, events: list[Any]) -> None:
    share = -(-len(events) // THREADS)
    errors: list[BaseException] = []

    def produce(part: list[Any]) -> None:
        try:
            _publish_each(store, part)
        except BaseException as exc:  # reported after the join, never lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(events[k * share:(k + 1) * share],))
               for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _subscribe_each(store: Any, events: list[Any]) -> None:
    subscribe = store.subscribe
    for ev in events:
        subscribe(ev)
    store.publish()


def _bulk(store: Any, events: list[Any]) -> None:
    store.subscribe_many(events)
    store.publish()


def mp_queue() -> float:
    data = items()
    q: Any = multiprocessing.Queue()
    done: Any = multiprocessing.Queue()
    clean = False
    try:
        with _common.consumer_processes(_handlers.queue_consumer, (q, done), 1):
            q.put(_handlers.PING)
            done.get(timeout=_common.WAIT_TIMEOUT)
            t0 = time.perf_counter()
            for it in data:
                q.put(it)
            q.put(_handlers.SENTINEL)
            total = done.get(timeout=_common.WAIT_TIMEOUT)
            dt = time.perf_counter() - t0
            clean = True
        if total != N:
            raise _common.Mismatch(f"the consumer handled {total} of {N}")
        return dt
    finally:
        _common.close_queue(q, clean)
        _common.close_queue(done, clean)


def contenders() -> list[tuple[Any, ...]]:
    return [
        (f"busmp subscribe+publish per event (workers={WORKERS})", lambda: _busmp_run(_publish_each)),
        (f"busmp subscribe+publish per event, {THREADS} threads (workers={WORKERS})", lambda: _busmp_run(_threads)),
        (f"busmp subscribe per event, one publish (workers={WORKERS})", lambda: _busmp_run(_subscribe_each)),
        (f"busmp subscribe_many + publish, bulk (workers={WORKERS})", lambda: _busmp_run(_bulk)),
        (BASELINE, mp_queue, "one consumer process"),
    ]
