"""latency: one event on an idle bus, publish -> flush returns; 200 samples; p50/p99 in µs."""

from __future__ import annotations

import time
from typing import Any

from . import _common, _handlers

NAME = "latency"
TITLE = "one event on an idle bus, round trip to 1 worker process"
KIND = "latency"
UNIT = "µs"
SAMPLES = 200
GAP = 0.001  # idle time before each sample, not timed
WORKERS = 1
BASELINE = "ProcessPoolExecutor(1).submit().result()"
NOTES = [
    f"{SAMPLES} samples per repetition, each after {GAP * 1e3:g} ms of idle time (not timed).",
    "busmp: `subscribe(ev)` before the clock, then `publish()` + `flush()` timed.",
    "p50 column: median over repetitions of each repetition's p50; p99: over all samples of all repetitions.",
]


def _busmp() -> list[float]:
    busmp = _common.load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    ev = busmp.Event("p", {"i": 0})
    store = None
    try:
        store = _common.busmp_store(busmp, d, workers=WORKERS)
        for _ in range(3):
            store.subscribe(ev)
            store.publish()
            store.flush(timeout=_common.WAIT_TIMEOUT)
        before = _common.busmp_processed(store)
        samples = []
        pc, sleep = time.perf_counter, time.sleep
        for _ in range(SAMPLES):
            store.subscribe(ev)
            sleep(GAP)
            t0 = pc()
            store.publish()
            store.flush(timeout=_common.WAIT_TIMEOUT)
            samples.append(pc() - t0)
        _common.check_busmp_processed(store, before, SAMPLES)
        return samples
    finally:
        _common.close_busmp_store(store)


def ppe_round_trip() -> list[float]:
    payload = {"i": 0}
    with _common.process_pool_executor(WORKERS) as ex:
        for _ in range(3):
            ex.submit(_handlers.noop, payload).result(timeout=_common.WAIT_TIMEOUT)
        samples = []
        pc, sleep = time.perf_counter, time.sleep
        for _ in range(SAMPLES):
            sleep(GAP)
            t0 = pc()
            ex.submit(_handlers.noop, payload).result(timeout=_common.WAIT_TIMEOUT)
            samples.append(pc() - t0)
    return samples


def contenders() -> list[tuple[Any, ...]]:
    return [
        (f"busmp (workers={WORKERS})", _busmp),
        (BASELINE, ppe_round_trip),
    ]
