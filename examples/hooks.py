"""Lifecycle hooks: once per (event, handler), always in the process that owns the store."""

import os

from busmp import Dispatcher, Event, EventStore, Result


def square(ctx, ev):  # runs in a worker process
    if ev.data < 0:
        raise ValueError(f"negative input: {ev.data}")
    return Result("squared", (ev.data * ev.data, os.getpid()))


d = Dispatcher()
d.register("square", square)

if __name__ == "__main__":  # worker processes import this module: start them only here
    seen = {"before": 0, "pids": set(), "values": [], "errors": []}

    def before(ctx, ev):
        seen["before"] += 1
        seen["pids"].add(os.getpid())

    def after(ctx, ev, result, error):  # result is Result() when the handler failed
        if error is None:
            seen["values"].append(result.value[0])

    def on_error(ctx, ev, error):
        seen["errors"].append(repr(error))

    with EventStore(d, workers=2) as store:
        store.on_before(before)
        store.on_after(after)
        store.on_error(on_error)
        store.subscribe_many(Event("square", n) for n in (1, 2, 3, -4))
        store.publish()
        store.flush()
    print(seen["before"], sorted(seen["values"]))  # 4 [1, 4, 9]
    print(seen["errors"])                          # ["ValueError('negative input: -4')"]
    print(seen["pids"] == {os.getpid()})           # True
