"""busmp demo: CPU-bound handlers offloaded to worker processes.

Each event asks for the number of primes below a bound, counted in pure Python (so the GIL
would serialise it in threads). The same events go through a sync store (workers=0) and a
store with one worker per core; hooks and the dead-letter queue stay in this process.
"""

from __future__ import annotations

import os
import time

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Result


def count_primes(ctx, ev: Event) -> Result:
    """CPU work: primes below ev.data["below"]."""
    below = ev.data["below"]
    sieve = bytearray([1]) * below
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(below**0.5) + 1):
        if sieve[i]:
            sieve[i * i:: i] = bytes(len(range(i * i, below, i)))
    return Result("counted", (below, sum(sieve), os.getpid()))


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
    events = [Event("primes", {"below": 150_000 + i}, id=f"e{i}") for i in range(240)]
    print(f"{len(events)} CPU-bound events (a prime sieve in Python each), {cores} cores")
    serial, _, _ = run(0, events)
    parallel, by_pid, dlq = run(cores, events)
    print(f"sync (in this process):   {serial:6.2f} s")
    print(f"{cores} worker processes:      {parallel:6.2f} s   speed-up {serial / parallel:.2f}x")
    print(f"events per worker pid:    {by_pid}")
    print(f"dead letters:             {len(dlq)} (flaky handler refuses multiples of 7), e.g. "
          f"{dlq.entries()[0].handler}: {dlq.entries()[0].error!r}")


if __name__ == "__main__":
    main()
