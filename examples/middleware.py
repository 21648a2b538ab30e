"""Middleware wraps every per-event handler; the first registered is the outermost."""

from busmp import Dispatcher, Event, EventStore, constant_backoff, with_retry

calls = []


def logging_middleware(handler):
    def logged(ctx, ev):
        print("handling", ev.id)  # handling p-1
        try:
            return handler(ctx, ev)
        finally:
            print("done", ev.id)  # done p-1

    return logged


def with_deadline(handler):
    return lambda ctx, ev: handler(ctx.with_timeout(0.5), ev)  # the earlier deadline wins


def charge(ctx, ev):  # fails twice, then succeeds
    calls.append(ctx.remaining() is not None)
    if len(calls) < 3:
        raise ConnectionError("payment gateway busy")


d = Dispatcher()
d.register("payment", charge)

with EventStore(d) as store:
    store.use(logging_middleware)                       # outermost
    store.use(with_deadline)
    store.use(with_retry(2, constant_backoff(0.01)))    # innermost: up to 3 calls
    store.subscribe(Event("payment", 100, id="p-1"))
    store.publish()
    print(calls)            # [True, True, True]
    print(store.metrics())  # Metrics(published=1, processed=1, errors=0)
