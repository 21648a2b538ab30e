"""busmp on a Ray cluster: the same store, handlers running in Ray actors.

On one machine this starts a local Ray cluster for the store and stops it at the end. On two
machines::

    machine A$ ray start --head --port=6379
    machine B$ ray start --address=<A's address>:6379
    machine A$ RAY_ADDRESS=auto python examples/ray_backend.py

Every machine needs busmp installed (``pip install 'busmp[ray]'``); this file need not be
there: the handler below travels to the actors by value.
"""

from __future__ import annotations

import os
import socket
import sys
from collections import Counter

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Result


def crunch(ctx, event):  # runs in an actor, on whichever machine Ray placed it
    return Result("done", (socket.gethostname(), os.getpid(), sum(i * i for i in range(event.data))))


def main() -> int:
    try:
        import ray
    except ImportError:
        print("Ray is not installed, so there is nothing to show: pip install 'busmp[ray]'")
        return 0
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto")  # join the cluster `ray start` made; it stays up afterwards

    d = Dispatcher()
    d.register("crunch", crunch)
    where: Counter[tuple[str, int]] = Counter()
    with EventStore(d, workers=4, backend="ray", dlq=DeadLetterQueue()) as store:
        store.on_after(lambda ctx, ev, res, err: where.update([res.value[:2]]))  # runs here
        store.subscribe_many(Event("crunch", n) for n in range(100_000, 100_400))
        store.publish()
        store.flush()
        print(store.metrics())  # Metrics(published=400, processed=400, errors=0)
    for (host, pid), count in sorted(where.items()):
        print(f"{count:4d} events handled on {host}, actor pid {pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
