"""submit: results back at the caller, one future per event, and 1000 awaiting handlers at once.

Two questions in one table, both counted in results delivered to the caller per second:

* ``submit(ev).result()`` one at a time, against ``ProcessPoolExecutor(2).submit(f).result()``:
  the round trip of a future per piece of work;
* 1000 concurrent ``asubmit`` of an ``async def`` handler that awaits ``asyncio.sleep(0.01)``
  on 2 workers: the handlers overlap while they await. One after the other, 1000 sleeps of
  10 ms take 10 s; a pool of 2 processes that sleep in turn, 5 s; ``asyncio.gather`` of the
  sleeps in the parent (no processes, no bus) is the floor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import _common

NAME = "submit"
TITLE = "results at the caller: submit().result() round trips; 1000 concurrent asubmit of a 10 ms await"
KIND = "rate"
UNIT = "results/s"
N = 1000
WORK = N
WORKERS = 2
SLEEP = 0.01
BASELINE = f"ProcessPoolExecutor({WORKERS}).submit(f).result(), one at a time"
NOTES = [
    f"Every contender delivers N={N} results to the caller; pools and stores are created and warmed "
    "up before the clock starts.",
    f"Round trips: busmp `submit(Event(...)).result()` on {WORKERS} workers against "
    f"`ProcessPoolExecutor({WORKERS}).submit(f, x).result()`, each result awaited before the next call.",
    f"Awaiting handlers: `asyncio.gather` of N `asubmit` calls, the handler `await asyncio.sleep({SLEEP})`, "
    f"{WORKERS} workers; N sleeps of {SLEEP * 1e3:g} ms one after the other would take {N * SLEEP:g} s. "
    f"References: ProcessPoolExecutor({WORKERS}) running N `time.sleep({SLEEP})` calls submitted at "
    "once (each process sleeps in turn), and `asyncio.gather` of N sleeps in the parent (the floor).",
]


def square(ctx: Any, ev: Any) -> Any:  # a busmp handler, run in a worker
    import busmp

    return busmp.Result("square", ev.data * ev.data)


def square_plain(x: int) -> int:  # the same work for ProcessPoolExecutor
    return x * x


async def wait_10ms(ctx: Any, ev: Any) -> Any:  # an I/O-bound busmp handler
    import busmp

    await asyncio.sleep(SLEEP)
    return busmp.Result("waited", ev.data)


def _store(handler: Any) -> tuple[Any, Any]:
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", handler)
    return busmp, _common.busmp_store(busmp, d, workers=WORKERS)


def busmp_round_trips() -> float:
    busmp, store = None, None
    try:
        busmp, store = _store(square)
        for i in range(20):
            store.submit(busmp.Event("p", i)).result(timeout=_common.WAIT_TIMEOUT)
        events = [busmp.Event("p", i) for i in range(N)]
        submit, total = store.submit, 0
        t0 = time.perf_counter()
        for ev in events:
            total += submit(ev).result(timeout=_common.WAIT_TIMEOUT)[0].value
        dt = time.perf_counter() - t0
        if total != sum(i * i for i in range(N)):
            raise _common.Mismatch(f"sum of results {total}")
        return dt
    finally:
        _common.close_busmp_store(store)


def ppe_round_trips() -> float:
    with _common.process_pool_executor(WORKERS) as ex:
        _common.warm_up_executor(ex, square_plain, WORKERS)
        submit, total = ex.submit, 0
        t0 = time.perf_counter()
        for i in range(N):
            total += submit(square_plain, i).result(timeout=_common.WAIT_TIMEOUT)
        dt = time.perf_counter() - t0
    if total != sum(i * i for i in range(N)):
        raise _common.Mismatch(f"sum of results {total}")
    return dt


def busmp_concurrent_asubmit() -> float:
    busmp, store = None, None
    try:
        busmp, store = _store(wait_10ms)

        async def gather(count: int) -> list[Any]:
            return await asyncio.gather(*(store.asubmit(busmp.Event("p", i)) for i in range(count)))

        asyncio.run(gather(4 * WORKERS))  # warm-up: every worker has made its event loop
        t0 = time.perf_counter()
        results = asyncio.run(gather(N))
        dt = time.perf_counter() - t0
        if sorted(r[0].value for r in results) != list(range(N)):
            raise _common.Mismatch(f"{len(results)} results")
        return dt
    finally:
        _common.close_busmp_store(store)


def ppe_concurrent_sleeps() -> float:
    with _common.process_pool_executor(WORKERS) as ex:
        _common.warm_up_executor(ex, square_plain, WORKERS)
        t0 = time.perf_counter()
        futures = [ex.submit(time.sleep, SLEEP) for _ in range(N)]
        done = sum(1 for f in futures if f.result(timeout=_common.WAIT_TIMEOUT) is None)
        dt = time.perf_counter() - t0
    if done != N:
        raise _common.Mismatch(f"{done} results")
    return dt


def asyncio_gather_in_parent() -> float:
    async def gather() -> list[Any]:
        return await asyncio.gather(*(asyncio.sleep(SLEEP, i) for i in range(N)))

    t0 = time.perf_counter()
    results = asyncio.run(gather())
    dt = time.perf_counter() - t0
    if len(results) != N:
        raise _common.Mismatch(f"{len(results)} results")
    return dt


def contenders() -> list[tuple[Any, ...]]:
    return [
        (f"busmp submit(ev).result(), one at a time (workers={WORKERS})", busmp_round_trips),
        (BASELINE, ppe_round_trips),
        (f"busmp {N} concurrent asubmit, handler awaits {SLEEP * 1e3:g} ms (workers={WORKERS})",
         busmp_concurrent_asubmit),
        (f"ProcessPoolExecutor({WORKERS}): {N} time.sleep({SLEEP}) submitted at once", ppe_concurrent_sleeps),
        (f"asyncio.gather of {N} sleeps of {SLEEP * 1e3:g} ms in the parent (floor)", asyncio_gather_in_parent),
    ]
