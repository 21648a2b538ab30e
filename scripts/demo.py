"""busmp demo: CPU-bound handlers offloaded to worker processes.

Each event asks for the number of primes below a bound, counted by trial division in pure
Python (so the GIL would serialise it in threads). The same events go through a sync store
(workers=0) and a store with one worker per core; hooks and the dead-letter queue stay in
this process.
"""

from __future__ import annotations

import os
import time

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Result


def count_primes(ctx, ev: Event) -> Result:
    """Pure-Python CPU work (trial division), the kind the GIL serialises in threads."""
    below = ev.data["below"]
    count = 0
    for n in range(2, below):
        d = 2
        while d * d <= n and n % d:
            d += 1
        count += d * d > n
    return Result("counted", (below, count, os.getpid()))


def flaky(ctx, ev: Event) -> None:
    if ev.data["below"] % 7 == 0:
        raise ValueError(f"refusing {ev.data['below']}")


def run(workers: int, events: list[Event]) -> tuple[float, dict[int, int], DeadLetterQueue]:
    d = Dispatcher()
    d.register("primes", count_primes, flaky)
    dlq = DeadLetterQueue()
    by_pid: dict[int, int] = {}

    def tally(ctx, ev, res, err):  # runs here, in the parent, also for worker mode
        if err is None and res.value is not None:
            pid = res.value[2]
            by_pid[pid] = by_pid.get(pid, 0) + 1

    with EventStore(d, 1 << 12, workers=workers, dlq=dlq) as store:
        store.on_after(tally)
        start = time.perf_counter()
        store.subscribe_many(events)
        store.publish()
        store.flush()
        elapsed = time.perf_counter() - start
        print(f"  workers={workers}: {store.metrics()}")
    return elapsed, by_pid, dlq


def main() -> None:
    cores = os.cpu_count() or 2
    events = [Event("primes", {"below": 12_000 + i}, id=f"e{i}") for i in range(200)]
    print(f"{len(events)} CPU-bound events (primes counted in pure Python, about 10 ms each), {cores} cores")
    serial, _, _ = run(0, events)
    parallel, by_pid, dlq = run(cores, events)
    print(f"sync (in this process):   {serial:6.2f} s")
    print(f"{cores} worker processes:      {parallel:6.2f} s   speed-up {serial / parallel:.2f}x")
    print(f"events per worker pid:    {by_pid}")
    print(f"dead letters:             {len(dlq)} (flaky handler refuses multiples of 7), e.g. "
          f"{dlq.entries()[0].handler}: {dlq.entries()[0].error!r}")


if __name__ == "__main__":
    main()
