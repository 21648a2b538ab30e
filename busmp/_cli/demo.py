"""``demo``: CPU-bound handlers offloaded to worker processes, compared with sync mode.

Each event asks for the number of primes below a bound, counted by trial division in pure
Python (work the GIL would serialise in threads). The same events go through a sync store
(``workers=0``) and a store with one worker process per core; hooks and the dead-letter queue
stay in this process in both. The handlers live in this module so that every start method can
import them in a worker.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .._dispatch import Dispatcher
from .._dlq import DeadLetterQueue
from .._event import Context, Event, Result
from .._metrics import Metrics
from . import OK

__all__ = ["count_primes", "flaky", "run_demo", "Run", "pick_events"]

SYNC_SECONDS = 3.0        # the default workload: about this much sync work on this machine
BASE_BOUND = 12_000       # primes below ~12 000: some milliseconds of pure Python per event
MIN_EVENTS, MAX_EVENTS = 16, 5_000
BAR = 30                  # characters of the progress bar
REFUSED_EVERY = 7         # the flaky handler refuses bounds divisible by this


def count_primes(ctx: Context, ev: Event) -> Result:
    """Pure-Python CPU work (trial division), the kind the GIL serialises in threads."""
    below = ev.data["below"]
    count = 0
    for n in range(2, below):
        d = 2
        while d * d <= n and n % d:
            d += 1
        count += d * d > n
    return Result("counted", (below, count, os.getpid()))


def flaky(ctx: Context, ev: Event) -> None:
    """A second handler of every event, which refuses some: they become dead letters."""
    if ev.data["below"] % REFUSED_EVERY == 0:
        raise ValueError(f"refusing {ev.data['below']}")


@dataclass
class Run:
    """What one store did with the events."""

    label: str
    seconds: float = 0.0
    metrics: Metrics = Metrics(0, 0, 0)
    dead_letters: DeadLetterQueue = field(default_factory=DeadLetterQueue)
    by_pid: dict[int, int] = field(default_factory=dict)


def pick_events(requested: int | None) -> tuple[list[Event], float]:
    """The events, and the measured seconds per event; without ``requested``, as many as make
    about ``SYNC_SECONDS`` of sync work here (measured on a few events first)."""
    probe = [Event("primes", {"below": BASE_BOUND + i}) for i in range(3)]
    start = time.perf_counter()
    for ev in probe:
        count_primes(BACKGROUND_CTX, ev)
    per_event = (time.perf_counter() - start) / len(probe)
    n = requested or max(MIN_EVENTS, min(MAX_EVENTS, round(SYNC_SECONDS / max(per_event, 1e-6))))
    return [Event("primes", {"below": BASE_BOUND + i}, id=f"e{i}") for i in range(n)], per_event


BACKGROUND_CTX = Context()


class Progress:
    """A one-line progress bar on a terminal; on anything else, nothing until the end."""

    def __init__(self, out: TextIO, label: str, total: int, enabled: bool) -> None:
        self.out, self.label, self.total = out, label, total
        self.enabled = enabled and out.isatty()
        self.start = time.perf_counter()

    def show(self, done: int) -> None:
        if not self.enabled:
            return
        filled = BAR * done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        self.out.write(f"\r  {self.label:<20}[{'#' * filled}{'.' * (BAR - filled)}] {done:>5}/{self.total} "
                       f"events  {elapsed:5.1f} s  {rate:7.1f} events/s\x1b[K")
        self.out.flush()

    def close(self, seconds: float) -> None:
        if self.enabled:
            self.out.write("\r\x1b[K")
        self.out.write(f"  {self.label:<20}done: {self.total} events in {seconds:.2f} s\n")
        self.out.flush()


def _tally(run: Run) -> Callable[[Context, Event, Result, BaseException | None], None]:
    def tally(ctx: Context, ev: Event, res: Result, err: BaseException | None) -> None:
        # Runs here, in the parent, also in worker mode: hooks always do.
        if err is None and isinstance(res.value, tuple):
            pid = res.value[2]
            run.by_pid[pid] = run.by_pid.get(pid, 0) + 1
    return tally


def run_store(label: str, workers: int, events: list[Event], name: str, out: TextIO, progress: bool) -> Run:
    """Handle ``events`` in a store with ``workers`` workers, drawing progress as it goes."""
    from .._store import EventStore

    d = Dispatcher()
    d.register("primes", count_primes, flaky)
    run = Run(label)
    bar = Progress(out, label, len(events), progress)
    with EventStore(d, 1 << 12, workers=workers, dlq=run.dead_letters, name=name) as store:
        store.on_after(_tally(run))
        handlers = len(d.handlers("primes"))
        start = time.perf_counter()
        if workers == 0:
            # Sync mode runs handlers inside publish(): publish in steps to show progress.
            step = max(1, len(events) // BAR)
            for at in range(0, len(events), step):
                store.subscribe_many(events[at: at + step])
                store.publish()
                bar.show(min(at + step, len(events)))
        else:
            store.subscribe_many(events)
            store.publish()
            while True:
                try:
                    store.flush(timeout=0.1)
                    break
                except TimeoutError:
                    bar.show(store.stats().processed // handlers)
        run.seconds = time.perf_counter() - start
        run.metrics = store.metrics()
    bar.close(run.seconds)
    return run


def run_demo(events: int | None = None, workers: int | None = None, progress: bool = True,
             out: TextIO | None = None) -> int:
    out = out or sys.stdout
    cores = os.cpu_count() or 2
    workers = workers or cores
    chosen, per_event = pick_events(events)
    name = f"demo-{os.getpid()}"
    print(f"busmp demo: {len(chosen)} CPU-bound events (primes below ~{BASE_BOUND:,} counted in pure Python, "
          f"~{per_event * 1000:.0f} ms each here), two handlers each; {cores} cores", file=out)
    print(f"watch it from another terminal: python -m busmp top {name}-w", file=out)
    sync = run_store("sync (workers=0)", 0, chosen, f"{name}-s", out, progress)
    parallel = run_store(f"{workers} worker processes", workers, chosen, f"{name}-w", out, progress)
    print_table(out, len(chosen), sync, parallel)
    return OK


def print_table(out: TextIO, n: int, sync: Run, parallel: Run) -> None:
    rows: list[tuple[str, ...]] = [("", "events", "seconds", "events/s", "speed-up", "processed", "errors",
                                    "dead letters")]
    for run in (sync, parallel):
        rows.append((run.label, f"{n:,}", f"{run.seconds:.2f}", f"{n / run.seconds:,.1f}",
                     f"{sync.seconds / run.seconds:.2f}x", f"{run.metrics.processed:,}", f"{run.metrics.errors:,}",
                     f"{len(run.dead_letters):,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(file=out)
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))), file=out)
    print(file=out)
    pids = ", ".join(f"pid {pid}: {count}" for pid, count in sorted(parallel.by_pid.items()))
    print(f"  events per worker process: {pids}", file=out)
    letters = parallel.dead_letters.entries()
    if letters:
        first: Any = letters[0]
        print(f"  dead letters: the flaky handler refuses bounds divisible by {REFUSED_EVERY}, e.g. "
              f"{first.handler}: {first.error!r}", file=out)
    print("  hooks and the dead-letter queue ran in this process in both runs", file=out)
