"""Fan-out: every handler of a projection runs for each event, in order, independently."""

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore


def audit(ctx, ev):
    print("audit", ev.id)  # audit o-1


def reserve_stock(ctx, ev):
    raise RuntimeError(f"out of stock: {ev.data['sku']}")


def notify(ctx, ev):
    print("notify", ev.id)  # notify o-1


def analytics(ctx, ev):
    pass


d = Dispatcher()
d.register("order.placed", audit, reserve_stock, notify)
d.register("order.placed", analytics)  # later calls append, e.g. from another module
names = [handler.__name__ for handler in d.handlers("order.placed")]
print(names)  # ['audit', 'reserve_stock', 'notify', 'analytics']

dlq = DeadLetterQueue()
with EventStore(d, dlq=dlq) as store:
    store.subscribe(Event("order.placed", {"sku": "A-1"}, id="o-1"))
    store.publish()
    print(store.metrics())                         # Metrics(published=1, processed=4, errors=1)
    print([letter.handler for letter in dlq.entries()])  # ['__main__.reserve_stock']
