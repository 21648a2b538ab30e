"""cpu_bound: 400 handler calls of ~1 ms pure-Python CPU each on 2 workers; speed-up vs serial."""

from __future__ import annotations

import sys
import time
from typing import Any

from . import _common, _handlers

NAME = "cpu_bound"
TITLE = "400 calls of ~1 ms pure-Python CPU on 2 worker processes"
KIND = "rate"
UNIT = "calls/s"
CALLS = 400
WORK = CALLS
WORKERS = 2
BASELINE = "serial loop (parent)"
RATIO_LABEL = "speed-up vs serial"
NOTES: list[str] = [
    f"{CALLS} calls; the loop count is calibrated once per run so that one call is ~1 ms here.",
    "Pool/executor start-up and a warm-up round are excluded; busmp: store created and warmed up before timing.",
]

LOOPS = 0


def calibrate() -> None:
    global LOOPS
    if LOOPS:
        return
    LOOPS, per_call = _handlers.calibrate_burn(0.001)
    NOTES.append(f"calibrated: burn({LOOPS:,}) takes {per_call * 1e3:.2f} ms in the parent.")
    print(f"[cpu_bound] calibrated burn({LOOPS}) = {per_call * 1e3:.3f} ms", file=sys.stderr)


def serial() -> float:
    burn, loops = _handlers.burn, LOOPS
    t0 = time.perf_counter()
    for _ in range(CALLS):
        burn(loops)
    return time.perf_counter() - t0


def _busmp() -> float:
    return _common.time_busmp_round("cpu", _handlers.burn_handler, [LOOPS] * CALLS, [1], workers=WORKERS)


def _pool(chunksize: int) -> Any:
    def run() -> float:
        with _common.mp_pool(WORKERS) as pool:
            return _common.time_unordered(pool.imap_unordered, _handlers.burn, [1] * (4 * WORKERS),
                                          [LOOPS] * CALLS, chunksize=chunksize)

    return run


def ppe_map(factory: Any = None) -> float:
    args = [LOOPS] * CALLS
    with _common.process_pool_executor(WORKERS, factory) as ex:
        list(ex.map(_handlers.burn, [1] * (4 * WORKERS)))
        t0 = time.perf_counter()
        n = sum(1 for _ in ex.map(_handlers.burn, args))
        dt = time.perf_counter() - t0
    if n != CALLS:
        raise _common.Mismatch(f"{n} of {CALLS} results")
    return dt


def loky_map() -> float:
    loky = _common.optional_import("loky")
    return ppe_map(loky.ProcessPoolExecutor)


def mpire_imap() -> float:
    return _common.time_mpire_round(WORKERS, _handlers.burn, [1] * (4 * WORKERS), [LOOPS] * CALLS, 1)


def contenders() -> list[tuple[Any, ...]]:
    calibrate()
    return [
        (f"busmp (workers={WORKERS})", _busmp),
        (BASELINE, serial),
        ("Pool.imap_unordered(chunksize=1)", _pool(1)),
        ("Pool.imap_unordered(chunksize=4)", _pool(4)),
        ("Pool.imap_unordered(chunksize=8)", _pool(8)),
        ("ProcessPoolExecutor.map", ppe_map, "chunksize=1 (default)"),
        ("mpire WorkerPool.imap_unordered(chunk_size=1)", mpire_imap),
        ("loky ProcessPoolExecutor.map", loky_map, "chunksize=1 (default)"),
    ]
