"""Module-level work functions shared by busmp and its peers.

Everything a worker process runs lives here so that every contender ships the same
importable functions (no closures, no lambdas), whatever the start method.
The ``*_handler(ctx, event)`` forms are busmp handlers; the bare forms are for the peers.
"""

from __future__ import annotations

import time
from typing import Any

SENTINEL = None
PING = "__ping__"


# --------------------------------------------------------------------------- no-op


def noop(item: Any) -> None:
    return None


def noop_handler(ctx: Any, event: Any) -> None:
    return None


def blinker_receiver(sender: Any, **kwargs: Any) -> None:
    return None


# --------------------------------------------------------------------------- CPU


def burn(loops: int) -> int:
    """Pure-Python CPU work; ``loops`` is calibrated so one call takes ~1 ms."""
    x = 0
    for i in range(loops):
        x = (x + i * i) % 1000003
    return x


def burn_handler(ctx: Any, event: Any) -> None:
    burn(event.data)


def calibrate_burn(target_seconds: float = 0.001, probe_loops: int = 20000) -> tuple[int, float]:
    """Return ``(loops, seconds_per_call)`` such that ``burn(loops)`` takes about ``target_seconds``."""
    burn(probe_loops)  # warm
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        burn(probe_loops)
        best = min(best, time.perf_counter() - t0)
    loops = max(1, int(probe_loops * target_seconds / best))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        burn(loops)
        best = min(best, time.perf_counter() - t0)
    return loops, best


# --------------------------------------------------------------------------- numpy


def touch_byte(arr: Any) -> int:
    """Read one byte (the last) of an array, so the payload really arrived."""
    return int(arr.view("u1")[-1])


def touch_handler(ctx: Any, event: Any) -> None:
    touch_byte(event.data)


# --------------------------------------------------------------------------- queue consumers


def queue_consumer(q: Any, done: Any, kind: str = "noop") -> None:
    """Take items until the sentinel; answer pings; report how many items were handled."""
    work = touch_byte if kind == "touch" else noop
    n = 0
    while True:
        item = q.get()
        if item is SENTINEL:
            break
        if isinstance(item, str) and item == PING:
            done.put(-1)
            continue
        work(item)
        n += 1
    done.put(n)


def ff_queue_consumer(q: Any, done: Any) -> None:
    """Same as :func:`queue_consumer` for faster-fifo (whose get() times out by default)."""
    n = 0
    while True:
        item = q.get(timeout=1e6)
        if item is SENTINEL:
            break
        if isinstance(item, str) and item == PING:
            done.put(-1, timeout=1e6)
            continue
        noop(item)
        n += 1
    done.put(n, timeout=1e6)
