"""Soak test (not run in CI): mixed load with faults for N minutes, checking the law throughout.

    python scripts/soak.py --minutes 10 --workers 4 --start-method forkserver

Load: rounds of ``subscribe``/``subscribe_many`` + ``publish`` of events with two fan-out
handlers, a batch handler, follow-ups (``ctx.emit``), handlers that raise, and now and then one
that hangs past ``handler_timeout``. Faults: a side thread SIGKILLs a random worker every
``--kill-every`` seconds. Every ``--report`` seconds the script flushes and prints a row:
events so far, kills, timeouts, and the law checked per (event, handler) pair: *lost* (no
outcome at all) and *duplicated* (more than one: a success and a dead letter, or two of
either), plus the parent's RSS growth since the first row. Exit status 1 if anything was lost
or duplicated. The RSS includes the script's own records of every event (some 200 bytes each).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import signal
import sys
import threading
import time

import psutil

from busmp import BLOCK, DeadLetterQueue, Dispatcher, Event, EventStore, Result

HANDLERS = ("first", "second")


def first(ctx, ev):
    kind = ev.data
    if kind == "raise":
        raise ValueError("soak: a failing handler")
    if kind == "hang":
        time.sleep(60)
    if kind == "emit":
        ctx.emit(Event("p", "plain", id=f"{ev.id}.f"))
    return Result("first")


def second(ctx, ev):
    return Result("second")


def batch(ctx, events):
    return [Result("batch") for _ in events]


class Killer(threading.Thread):
    def __init__(self, store: EventStore, every: float) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.store, self.every, self.kills = store, every, 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.every):
            handles = self.store._bus.executor.handles
            process = random.choice(handles).process
            if process is None:
                continue
            try:
                os.kill(process.pid, signal.SIGKILL)
                self.kills += 1
            except (ProcessLookupError, ValueError, AttributeError):
                pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--start-method", default="fork")
    parser.add_argument("--kill-every", type=float, default=0.5, help="seconds between SIGKILLs (0: none)")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between rows")
    parser.add_argument("--timeout", type=float, default=0.5, help="handler_timeout")
    parser.add_argument("--verbose", action="store_true", help="show busmp's warnings (one per kill)")
    args = parser.parse_args(argv)

    d = Dispatcher()
    d.register("p", first, second)
    if not args.verbose:  # a replacement per kill is logged as a WARNING: too many to read here
        logging.getLogger("busmp").setLevel(logging.ERROR)
    # BLOCK: a dropped event is a legitimate end (DROP_OLDEST) but not one this check can see
    store = EventStore(d, 1 << 12, BLOCK, workers=args.workers, dlq=DeadLetterQueue(),
                       start_method=args.start_method, handler_timeout=args.timeout)
    store.register_batch("b", 64, batch)
    outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
    failed: collections.Counter[str] = collections.Counter()
    expected: dict[str, tuple[str, ...]] = {}  # event id -> the handlers it must reach
    lock = threading.Lock()

    def after(ctx, ev, res, err):
        with lock:
            if err is None:
                outcomes[(ev.id, res.message)] += 1
            else:
                failed[ev.id] += 1

    store.on_after(after)
    killer = Killer(store, args.kill_every) if args.kill_every > 0 else None
    if killer is not None:
        killer.start()
    me = psutil.Process()
    rss0 = None
    n = 0
    bad = False
    print(f"{'seconds':>8} {'events':>9} {'kills':>6} {'timeouts':>8} {'lost':>5} {'dup':>5} "
          f"{'rss MiB':>8} {'growth':>7}")
    started = time.monotonic()
    until = started + args.minutes * 60
    try:
        while time.monotonic() < until:
            row_until = min(until, time.monotonic() + args.report)
            while time.monotonic() < row_until:
                events, wants = [], []
                for _ in range(random.randint(1, 400)):
                    n += 1
                    r = random.random()
                    if r < 0.1:
                        eid, projection, kind, handlers = f"b{n}", "b", None, ("batch",)
                    else:
                        kind = ("raise" if r < 0.15 else "emit" if r < 0.25
                                else "hang" if r < 0.2502 else "plain")
                        eid, projection, handlers = f"e{n}", "p", HANDLERS
                    events.append(Event(projection, kind, id=eid))
                    wants.append(handlers)
                if random.random() < 0.5:
                    accepted = 0
                    while accepted < len(events):  # BLOCK takes what fits
                        accepted += store.subscribe_many(events[accepted:], timeout=30)
                        store.publish()
                else:
                    for event in events:
                        store.subscribe(event, timeout=30)
                with lock:
                    for event, handlers in zip(events, wants):
                        expected[event.id] = handlers
                        if event.data == "emit":
                            expected[f"{event.id}.f"] = HANDLERS
                store.publish()
            store.flush(timeout=120)
            lost, dup = check(expected, outcomes, failed, store, lock)
            bad = bad or lost > 0 or dup > 0
            rss = me.memory_info().rss / 2**20
            rss0 = rss if rss0 is None else rss0
            timeouts = sum(isinstance(dl.error, TimeoutError) for dl in store.dlq.entries())
            print(f"{time.monotonic() - started:8.0f} {len(expected):9d} {killer.kills if killer else 0:6d} "
                  f"{timeouts:8d} {lost:5d} {dup:5d} {rss:8.1f} {rss - rss0:+7.1f}", flush=True)
    finally:
        if killer is not None:
            killer.halt.set()
            killer.join(5)
        store.drain(timeout=60)
    return 1 if bad else 0


def check(expected, outcomes, failed, store, lock) -> tuple[int, int]:
    """(lost, duplicated) (event, handler) pairs so far."""
    dead = collections.Counter((dl.event.id, dl.handler.rsplit(".", 1)[-1]) for dl in store.dlq.entries())
    lost = dup = 0
    with lock:
        for eid, handlers in expected.items():
            # A follow-up exists only if its handler got to emit it: when that handler failed
            # (or its worker died), whether it did is unknown, so only duplicates count.
            sure = not eid.endswith(".f") or outcomes[(eid[:-2], "first")] > 0
            for h in handlers:
                ends = outcomes[(eid, h)] + dead[(eid, h)]
                lost += sure and ends == 0
                dup += ends > 1
    return lost, dup


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
