"""numpy_payload: 200 arrays of 1 MiB to ONE worker whose handler reads a byte of each. MB/s."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

from . import _common, _handlers

NAME = "numpy_payload"
TITLE = "200 x 1 MiB numpy arrays to 1 worker process, handler reads one byte"
KIND = "rate"
UNIT = "MB/s"
COUNT = 200
ELEMS = 131072  # float64 -> 1 MiB
NBYTES = ELEMS * 8
WORK = COUNT * NBYTES / 1e6  # MB (10^6 bytes)
WORKERS = 1
BASELINE = "multiprocessing.Queue"
NOTES = [
    f"{COUNT} distinct arrays `np.ones({ELEMS}, float64)` (1 MiB each, {COUNT * NBYTES / 2**20:.0f} MiB in all); "
    "MB = 10^6 bytes.",
    "The worker reads the last byte of every array; clock stops when the last one was handled.",
    "memcpy floor: `np.copyto` of the same arrays into one preallocated array, in the parent.",
    "Steady state: busmp and the Queue consumer each take one untimed full round of the 200 arrays first.",
]

_ARRAYS: list[Any] | None = None


def arrays() -> list[Any]:
    global _ARRAYS
    if _ARRAYS is None:
        import numpy as np

        _ARRAYS = [np.ones(ELEMS, dtype=np.float64) for _ in range(COUNT)]
    return _ARRAYS


def _busmp() -> float:
    # warm-up: one full round, so both sides run in steady state
    return _common.time_busmp_round("arr", _handlers.touch_handler, arrays(), arrays(), workers=WORKERS)


def mp_queue() -> float:
    data = arrays()
    q: Any = multiprocessing.Queue()
    done: Any = multiprocessing.Queue()
    clean = False
    try:
        with _common.consumer_processes(_handlers.queue_consumer, (q, done, "touch"), WORKERS):
            for a in data:  # warm-up: one full round, so both sides run in steady state
                q.put(a)
            q.put(_handlers.PING)
            done.get(timeout=_common.WAIT_TIMEOUT)
            t0 = time.perf_counter()
            for a in data:
                q.put(a)
            q.put(_handlers.SENTINEL)
            total = done.get(timeout=_common.WAIT_TIMEOUT)
            dt = time.perf_counter() - t0
            clean = True
        if total != 2 * COUNT:  # the warm-up round, then the timed one
            raise _common.Mismatch(f"consumer handled {total - COUNT} of {COUNT}")
        return dt
    finally:
        _common.close_queue(q, clean)
        _common.close_queue(done, clean)


def memcpy_floor() -> float:
    import numpy as np

    data = arrays()
    dst = np.empty(ELEMS, dtype=np.float64)
    np.copyto(dst, data[0])
    t0 = time.perf_counter()
    for a in data:
        np.copyto(dst, a)
    return time.perf_counter() - t0


def contenders() -> list[tuple[Any, ...]]:
    arrays()
    return [
        (f"busmp (workers={WORKERS})", _busmp),
        (BASELINE, mp_queue, "1 consumer process; arrays pickled through the pipe"),
        ("memcpy floor (np.copyto, in-process)", memcpy_floor, "no IPC: an upper bound"),
    ]
