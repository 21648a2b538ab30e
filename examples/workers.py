"""Worker processes: CPU-bound handlers run in N processes, outside this one's GIL."""

import os

from busmp import Dispatcher, Event, EventStore, Result


def crunch(ctx, ev):  # runs in a worker process
    return Result("done", (sum(i * i for i in range(ev.data)), os.getpid()))


d = Dispatcher()
d.register("crunch", crunch)

if __name__ == "__main__":  # worker processes import this module: start them only here
    pids = set()
    with EventStore(d, workers=2) as store:
        store.on_after(lambda ctx, ev, res, err: pids.add(res.value[1]))  # runs here, in the parent
        store.subscribe_many(Event("crunch", n) for n in range(20_000, 20_200))
        store.publish()  # hands the work off and returns
        store.flush()    # waits until it is done, follow-ups included
        print(store.metrics())                # Metrics(published=200, processed=200, errors=0)
        print(sum(store.stats().per_worker))  # 200
    print(os.getpid() in pids, len(pids))     # False 2
