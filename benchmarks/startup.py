"""startup: a pool of 2 worker processes created -> first event handled, per start method."""

from __future__ import annotations

import functools
import multiprocessing
import time
from typing import Any

from . import _common, _handlers

NAME = "startup"
TITLE = "2 worker processes created -> first event handled, same start method"
KIND = "latency"
UNIT = "ms"
SCALE = 1e3  # samples are seconds; shown in ms
SAMPLES = 4
WORKERS = 2
METHODS = ("forkserver", "spawn", "fork")
BASELINE = "ProcessPoolExecutor(2, forkserver)"
NOTES = [
    f"{SAMPLES} samples per repetition, each a fresh pool or store that is closed (untimed) before the next.",
    "busmp: `EventStore(d, workers=2, start_method=m)` + `subscribe` + `publish` + `flush` of one event; "
    "PPE: `ProcessPoolExecutor(2, mp_context=get_context(m))` + `submit(noop).result()`.",
    "One untimed warm-up sample first: the forkserver process, shared by both, is then already running.",
    "busmp's modules are byte-compiled before the run, as installing a wheel does (the standard library "
    "that PPE's workers import always is); with PYTHONDONTWRITEBYTECODE=1 and an editable install, every "
    "spawned busmp worker would otherwise compile them from source, some 35 ms here.",
    "Ratios are to forkserver PPE; compare each busmp row with the PPE row of its own start method.",
]


def _busmp_start(method: str) -> list[float]:
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    samples = []
    for n in range(SAMPLES + 1):
        store = None
        try:
            t0 = time.perf_counter()
            store = _common.busmp_store(busmp, d, buffer_size=1 << 10, workers=WORKERS, start_method=method)
            store.subscribe(busmp.Event("p", 0))
            store.publish()
            store.flush(timeout=_common.WAIT_TIMEOUT)
            elapsed = time.perf_counter() - t0
        finally:
            _common.close_busmp_store(store)
        if n:  # the first one warms up
            samples.append(elapsed)
    return samples


def _ppe_start(method: str) -> list[float]:
    from concurrent.futures import ProcessPoolExecutor

    factory = functools.partial(ProcessPoolExecutor, mp_context=multiprocessing.get_context(method))
    samples = []
    for n in range(SAMPLES + 1):
        t0 = time.perf_counter()
        with _common.process_pool_executor(WORKERS, factory) as ex:
            ex.submit(_handlers.noop, 0).result(timeout=_common.WAIT_TIMEOUT)
            elapsed = time.perf_counter() - t0
        if n:
            samples.append(elapsed)
    return samples


def contenders() -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for method in METHODS:
        rows.append((f"busmp (workers=2, {method})", functools.partial(_busmp_start, method)))
        rows.append((f"ProcessPoolExecutor(2, {method})", functools.partial(_ppe_start, method)))
    return rows
