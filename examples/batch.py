"""Batch handlers: the events of one publish() for a projection, in chunks of at most `size`."""

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, Result

chunks = []


def bulk_insert(ctx, events):
    chunks.append([ev.data for ev in events])
    return [Result("stored", ev.data) for ev in events]  # optional: one Result per event, for on_after


def flaky_export(ctx, events):
    if any(ev.data == 4 for ev in events):
        raise ConnectionError("export service down")  # the whole chunk fails


d = Dispatcher()
d.register("tick", lambda ctx, ev: None)  # a per-event handler may share the projection

dlq = DeadLetterQueue()
with EventStore(d, dlq=dlq) as store:
    store.register_batch("tick", 3, bulk_insert)
    store.register_batch("tick", 3, flaky_export)  # each batch handler gets every chunk
    store.subscribe_many(Event("tick", n) for n in range(7))
    store.publish()
    print(chunks)                         # [[0, 1, 2], [3, 4, 5], [6]]
    print(store.metrics())                # Metrics(published=7, processed=21, errors=3)
    print([letter.event.data for letter in dlq.entries()])  # [3, 4, 5]
