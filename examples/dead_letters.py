"""Dead letters: every failed (event, handler) is kept, inspectable and replayable."""

import os

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore


def charge(ctx, ev):
    if ev.data > 100:
        raise ValueError(f"{ev.data} is over the limit")


def crash(ctx, ev):
    os._exit(3)  # the worker process dies


d = Dispatcher()
d.register("charge", charge)
d.register("crash", crash)

if __name__ == "__main__":
    dlq = DeadLetterQueue()
    with EventStore(d, workers=1, dlq=dlq) as store:
        store.subscribe(Event("charge", 250, id="c-1"))
        store.publish()
        store.flush()
        letter = dlq.entries()[0]  # entries(): a snapshot copy, oldest first
        print(letter.event.id, repr(letter.error))  # c-1 ValueError('250 is over the limit')
        print(letter.attempts, letter.handler)      # 1 __main__.charge
        while len(dlq) and dlq.entries()[0].attempts < 3:  # gate replays on attempts
            dlq.replay(store)  # re-subscribe every entry and publish; failures return with attempts + 1
            store.flush()
        print([(letter.event.id, letter.attempts) for letter in dlq.drain()])  # [('c-1', 3)]

        store.subscribe(Event("crash", id="x-1"))
        store.publish()
        store.flush()
        letter = dlq.drain()[0]  # drain(): remove and return every entry
        print(type(letter.error).__name__, letter.handler)  # WorkerCrashed __main__.crash
        store.subscribe(Event("charge", 50, id="c-2"))     # a replacement worker took over
        store.publish()
        store.flush()
        print(len(dlq), store.metrics())  # 0 Metrics(published=5, processed=5, errors=4)
