"""small_events: 200k small dict events to 2 worker processes end to end, no-op handler.

Every pool/executor/consumer is created and warmed up before the clock starts (creation
time is excluded for all contenders, busmp included); the clock stops when the last item
has been handled.
"""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from . import _common, _handlers

NAME = "small_events"
TITLE = "small dict events to 2 worker processes, end to end, no-op handler"
KIND = "rate"
UNIT = "events/s"
N = 200_000
WORK = N
WORKERS = 2
CHUNK = 256
SUBMIT_SUBSET = 20_000
BASELINE = "multiprocessing.Queue"
NOTES = [
    f"N={N:,} events `{{\"i\": i, \"name\": \"x\"}}`, {WORKERS} workers; payloads are built before timing.",
    "Pool/executor/consumer start-up and one warm-up round are excluded for every contender; "
    "busmp: store created and one tiny publish+flush done before timing.",
    "busmp: `subscribe_many(events)` + `publish()` + `flush()`, buffer_size=1<<18.",
    f"submit-per-item is timed on a {SUBMIT_SUBSET:,}-item subset and its time scaled x{N // SUBMIT_SUBSET} to N.",
]

_ITEMS: list[dict[str, Any]] | None = None


def items() -> list[dict[str, Any]]:
    global _ITEMS
    if _ITEMS is None:
        _ITEMS = [{"i": i, "name": "x"} for i in range(N)]
    return _ITEMS


def _busmp() -> float:
    return _common.time_busmp_round("p", _handlers.noop_handler, items(), [{"i": -1, "name": "warm-up"}],
                                    buffer_size=1 << 18, workers=WORKERS)


def _queue_run(make_queue: Any, consumer: Any, put: Any, get: Any) -> float:
    data = items()
    q = make_queue()
    done = make_queue()
    clean = False
    try:
        with _common.consumer_processes(consumer, (q, done), WORKERS):
            for _ in range(WORKERS):  # warm-up: both consumers running and answering
                put(q, _handlers.PING)
            for _ in range(WORKERS):
                get(done)
            t0 = time.perf_counter()
            for it in data:
                put(q, it)
            for _ in range(WORKERS):
                put(q, _handlers.SENTINEL)
            total = sum(get(done) for _ in range(WORKERS))
            dt = time.perf_counter() - t0
            clean = True
        if total != N:
            raise _common.Mismatch(f"consumers handled {total} of {N}")
        return dt
    finally:
        _common.close_queue(q, clean)
        _common.close_queue(done, clean)


def mp_queue() -> float:
    return _queue_run(
        multiprocessing.Queue,
        _handlers.queue_consumer,
        lambda q, x: q.put(x),
        lambda q: q.get(timeout=_common.WAIT_TIMEOUT),
    )


def faster_fifo_queue() -> float:
    ff = _common.optional_import("faster_fifo")
    _common.optional_import("faster_fifo_reduction")  # makes the queue picklable for Process args
    return _queue_run(
        lambda: ff.Queue(max_size_bytes=8 * 1024 * 1024),
        _handlers.ff_queue_consumer,
        lambda q, x: q.put(x, timeout=_common.WAIT_TIMEOUT),
        lambda q: q.get(timeout=_common.WAIT_TIMEOUT),
    )


def pool_imap() -> float:
    with _common.mp_pool(WORKERS) as pool:
        return _common.time_unordered(pool.imap_unordered, _handlers.noop, list(range(4 * WORKERS)),
                                      items(), chunksize=CHUNK)


def ppe_map(factory: Any = None) -> float:
    data = items()
    with _common.process_pool_executor(WORKERS, factory) as ex:
        _common.warm_up_executor(ex, _handlers.noop, WORKERS)
        t0 = time.perf_counter()
        n = sum(1 for _ in ex.map(_handlers.noop, data, chunksize=CHUNK))
        dt = time.perf_counter() - t0
    if n != N:
        raise _common.Mismatch(f"{n} of {N} results")
    return dt


def ppe_submit() -> float:
    data = items()[:SUBMIT_SUBSET]
    with _common.process_pool_executor(WORKERS) as ex:
        _common.warm_up_executor(ex, _handlers.noop, WORKERS)
        t0 = time.perf_counter()
        futures = [ex.submit(_handlers.noop, it) for it in data]
        for f in futures:
            f.result(timeout=_common.WAIT_TIMEOUT)
        dt = time.perf_counter() - t0
    return dt * (N / SUBMIT_SUBSET)


def loky_map() -> float:
    loky = _common.optional_import("loky")
    return ppe_map(loky.ProcessPoolExecutor)


def mpire_imap() -> float:
    data = [(it,) for it in items()]  # mpire unpacks dict items as kwargs; a 1-tuple passes it whole
    return _common.time_mpire_round(WORKERS, _handlers.noop, [(k,) for k in range(4 * WORKERS)], data, CHUNK)


def contenders() -> list[tuple[Any, ...]]:
    return [
        (f"busmp (workers={WORKERS})", _busmp),
        (BASELINE, mp_queue, "parent puts every item; 2 consumer processes get until a sentinel"),
        (f"Pool.imap_unordered(chunksize={CHUNK})", pool_imap),
        (f"ProcessPoolExecutor.map(chunksize={CHUNK})", ppe_map),
        ("ProcessPoolExecutor.submit per item", ppe_submit,
         f"timed on {SUBMIT_SUBSET:,} items, scaled x{N // SUBMIT_SUBSET}"),
        ("faster-fifo Queue", faster_fifo_queue, "same protocol as multiprocessing.Queue"),
        (f"mpire WorkerPool.imap_unordered(chunk_size={CHUNK})", mpire_imap),
        (f"loky ProcessPoolExecutor.map(chunksize={CHUNK})", loky_map),
    ]
