"""Quick start: one handler, one event, handled in this process (workers=0)."""

from busmp import Dispatcher, Event, EventStore

d = Dispatcher()


@d.on("user_created")
def greet(ctx, ev):
    print("user created:", ev.data["id"])  # user created: u-42


class HouseWasSold:  # a class is a projection too (any hashable value that pickles)
    pass


@d.on(HouseWasSold)
def sold(ctx, ev):
    print("house sold:", ev.data["address"], ev.data["price"])  # house sold: 1 Main St 500000


with EventStore(d) as store:
    store.subscribe(Event("user_created", {"id": "u-42"}, id="evt1"))
    store.subscribe(Event(HouseWasSold, {"address": "1 Main St", "price": 500_000}, id="evt2"))
    store.publish()         # workers=0: the handlers run here, now
    print(store.metrics())  # Metrics(published=2, processed=2, errors=0)
