"""Watching a store from outside: the parent's stats ticker and ``read_stats``.

The store's statistics block (``_transport.stats``) is written by two kinds of writer: each
worker writes its own line around each job, and the owner's :class:`StatsTicker` writes the
store's lines ``TICK_SECONDS`` apart, from counts the bus keeps anyway; rates are kept here as
a one-second window of those ticks. With workers the ticker is a thread (the store has a
collector thread already). A sync-mode store starts no thread at all: its bus ticks, when a tick
is due, at the end of ``subscribe``, ``subscribe_many`` and ``publish`` (a clock read), which are
the only moments its counts change; a sync store that has not ticked for a second did nothing
in that second, so a reader takes its rates as zero. The price of having no thread: calls that
come less than a tick after the last tick are not written until the next call, so a sync store
that stops right after a burst of ``subscribe`` shows the burst's last events (up to a tick's
worth) only at its next call; ``EventStore.stats()`` in the owner is always exact. Nothing else
on a per-event path writes shared statistics.

:func:`read_stats` is the reader's side; it imports neither numpy nor the store machinery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ._metrics import Stats

if TYPE_CHECKING:
    from ._bus import Bus
    from ._transport.stats import StatsBlock

__all__ = ["StatsTicker", "read_stats", "TICK_SECONDS", "RATE_WINDOW"]

log = logging.getLogger("busmp")

TICK_SECONDS = 0.1  # how stale a reader's view may be; ten small writes a second per store
RATE_WINDOW = 1.0   # rates are events per second over this many seconds


class StatsTicker:
    """The owner's thread that mirrors the bus's counts into its statistics block."""

    def __init__(self, bus: Bus, block: StatsBlock, name: str, threaded: bool) -> None:
        self._bus = bus
        self._block = block
        self._stop = threading.Event()
        self._ticking = threading.Lock()  # one tick at a time; a producer never waits for one
        self._window: deque[tuple[float, int, int, int, int]] = deque()
        self.rates = (0.0, 0.0, 0.0, 0.0)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True) if threaded else None

    def start(self) -> None:
        self.tick()
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        """End the thread (from any thread, the ticker's own included: a finalizer may run there)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.tick()
            except Exception:  # a bug here must not end the store's watching for good
                log.exception("busmp stats ticker: unexpected error; carrying on")

    def tick(self) -> None:
        """Write the counters and the state line once (the bus's counts are read without its
        lock: each value is read whole)."""
        if not self._ticking.acquire(blocking=False):
            return  # another thread is ticking right now
        try:
            self._bus.tick_due = time.monotonic() + TICK_SECONDS
            self._tick()
        finally:
            self._ticking.release()

    def _tick(self) -> None:
        bus = self._bus
        counters = bus.counters()
        now = time.time()
        window = self._window
        published, processed, errors, dropped = counters[0], counters[1], counters[2], counters[3]
        window.append((now, published, processed, errors, dropped))
        while len(window) > 2 and now - window[1][0] >= RATE_WINDOW:
            window.popleft()
        first = window[0]
        span = now - first[0]
        if span > 0:
            self.rates = ((published - first[1]) / span, (processed - first[2]) / span,
                          (errors - first[3]) / span, (dropped - first[4]) / span)
        block = self._block
        block.write_counters(counters)
        block.write_state(bus.state(), now, self.rates, bus.slots.free_events, len(bus.slots.free_pages))


def read_stats(name: str) -> Stats:
    """The statistics of the live store called ``name``, read from shared memory.

    Works from any process of the user that owns the store, without locks and without slowing
    it. The values are those its owner wrote last (a few times a second: ``Stats.updated``).
    ``KeyError`` (listing the live names) when no live store has that name: none was made,
    it was drained, or its process died (even by SIGKILL). ``ValueError`` for an invalid name.
    """
    from ._transport import stats as _stats

    _stats.check_name(name)
    values = _stats.snapshot(name)
    if values is None:
        live = _stats.live_names()
        listed = ", ".join(live) if live else "none"
        raise KeyError(f"no live busmp store is named {name!r} (live stores of this user: {listed}); "
                       "`python -m busmp ls` lists them")
    return stats_from(name, values)


def stats_from(name: str, values: dict[str, object]) -> Stats:
    """A :class:`Stats` from a block snapshot (``_transport.stats.snapshot``)."""
    from ._transport.stats import STORE_STATES, WORKER_STATES

    def whole(key: str) -> int:
        return int(values[key])  # type: ignore[call-overload, no-any-return]

    def real(key: str) -> float:
        return float(values[key])  # type: ignore[arg-type]

    # No tick for longer than the window: nothing was counted in it (see the module docstring).
    fresh = time.time() - real("updated") <= RATE_WINDOW + TICK_SECONDS

    def rate(key: str) -> float:
        return real(key) if fresh else 0.0

    workers: list[dict[str, float]] = values["worker"]  # type: ignore[assignment]
    return Stats(
        published=whole("published"), processed=whole("processed"), errors=whole("errors"),
        dropped=whole("dropped"), pending=whole("pending"), in_flight=whole("in_flight"),
        dead_letters=whole("dead_letters"), free_slots=whole("free"), slots=whole("buffer_size"),
        workers=whole("workers"), per_worker=tuple(int(w["handled"]) for w in workers),
        free_pages=whole("free_pages"), pages=whole("pages"), unhandled=whole("unhandled"), name=name,
        pid=whole("owner_pid"),
        state=STORE_STATES.get(whole("state"), "unknown"),
        worker_pids=tuple(int(w["pid"]) for w in workers),
        worker_states=tuple(WORKER_STATES.get(int(w["state"]), "unknown") for w in workers),
        worker_since=tuple(float(w["since"]) for w in workers),
        published_rate=rate("published_rate"), processed_rate=rate("processed_rate"),
        errors_rate=rate("errors_rate"), dropped_rate=rate("dropped_rate"), updated=real("updated"),
    )
