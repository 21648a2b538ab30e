"""Timers: one scheduler thread per store fires future events from a heap.

A :class:`Timer` is cancelled by removing it from the heap under the scheduler's lock, so
``cancel()`` returning ``True`` means the event will never fire, and ``False`` that it
already fired (or is firing, or was cancelled before).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from ._event import Context, Event

__all__ = ["Timer", "Scheduler", "to_timestamp", "to_seconds"]


def to_timestamp(when: datetime | float | int) -> float:
    """``time.time()`` seconds for a datetime (naive = local time) or a number."""
    if isinstance(when, datetime):
        return when.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"schedule() takes a datetime or time.time() seconds, not {type(when).__name__}")


def to_seconds(delay: timedelta | float | int) -> float:
    if isinstance(delay, timedelta):
        return delay.total_seconds()
    if isinstance(delay, (int, float)) and not isinstance(delay, bool):
        return float(delay)
    raise TypeError(f"schedule_after() takes seconds or a timedelta, not {type(delay).__name__}")


class Timer:
    """A scheduled event; ``cancel()`` stops it if it has not fired yet."""

    __slots__ = ("when", "event", "ctx", "_scheduler", "_state")

    def __init__(self, when: float, event: Event, ctx: Context | None, scheduler: Scheduler) -> None:
        self.when = when
        self.event = event
        self.ctx = ctx
        self._scheduler = scheduler
        self._state = "waiting"  # -> "fired" | "cancelled"

    def cancel(self) -> bool:
        return self._scheduler.cancel(self)

    def __repr__(self) -> str:
        when = datetime.fromtimestamp(self.when, timezone.utc).isoformat()
        return f"Timer(when={when}, event={self.event!r}, {self._state})"


class Scheduler:
    """A heap of timers and a thread, started on first use, that fires them when due."""

    def __init__(self, fire: Callable[[Timer], None], name: str) -> None:
        self._fire = fire
        self._name = name
        self._heap: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def add(self, when: float, event: Event, ctx: Context | None) -> Timer:
        timer = Timer(when, event, ctx, self)
        with self._cond:
            if self._stopped:
                raise RuntimeError("scheduler is stopped")
            heapq.heappush(self._heap, (when, next(self._order), timer))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._cond.notify()
        return timer

    def cancel(self, timer: Timer) -> bool:
        with self._cond:
            if timer._state != "waiting":
                return False
            timer._state = "cancelled"
            self._heap = [entry for entry in self._heap if entry[2] is not timer]
            heapq.heapify(self._heap)
            self._cond.notify()
            return True

    def stop(self) -> list[Timer]:
        """Stop the thread; returns the timers that never fired."""
        with self._cond:
            self._stopped = True
            left = [entry[2] for entry in sorted(self._heap)]
            for timer in left:
                timer._state = "cancelled"
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return left

    def __len__(self) -> int:
        return len(self._heap)

    def _run(self) -> None:
        while True:
            with self._cond:
                timer = self._next_due()
                if timer is None:
                    return
            self._fire(timer)

    def _next_due(self) -> Timer | None:
        """Wait (holding the condition) for the earliest timer to come due; None once stopped."""
        while not self._stopped:
            if not self._heap:
                self._cond.wait()
                continue
            wait = self._heap[0][0] - time.time()
            if wait > 0:
                self._cond.wait(wait)
                continue
            _, _, timer = heapq.heappop(self._heap)
            timer._state = "fired"
            return timer
        return None
