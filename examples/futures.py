"""Futures: submit() returns a concurrent.futures.Future per event, as ProcessPoolExecutor does."""

from concurrent.futures import as_completed

from busmp import Dispatcher, Event, EventStore, Result


def validate(ctx, ev):  # runs in a worker process, first
    if ev.data < 0:
        raise ValueError(f"negative size {ev.data}")


def crunch(ctx, ev):  # then this one, for the same event
    return Result("sum of squares", sum(i * i for i in range(ev.data)))


d = Dispatcher()
d.register("crunch", validate, crunch)

if __name__ == "__main__":  # worker processes import this module: start them only here
    with EventStore(d, workers=2) as store:
        futures = [store.submit(Event("crunch", n)) for n in (10, 100, 1000)]
        print(sum(1 for _ in as_completed(futures)))  # 3
        print(futures[0].result())  # [Result(message='', value=None), Result(message='sum of squares', value=285)]
        print([f.result()[1].value for f in futures])  # [285, 328350, 332833500]
        failed = store.submit(Event("crunch", -1))
        print(type(failed.exception()).__name__, failed.exception())  # ValueError negative size -1
