"""Follow-up events: ctx.emit() from a handler, in a worker or in this process alike."""

from busmp import Context, Dispatcher, Event, EventStore, Result

d = Dispatcher()


@d.on("order.placed")
def place(ctx, ev):
    ctx.emit(Event("invoice.issued", ev.data))  # a follow-up, carrying this handler's context


@d.on("invoice.issued")
def invoice(ctx, ev):
    return Result("issued", (ev.data, ctx.value("tenant")))


if __name__ == "__main__":
    issued = []

    def collect(ctx, ev, result, error):
        if ev.projection == "invoice.issued":
            issued.append(result.value)

    with EventStore(d, workers=2) as store:
        store.on_after(collect)
        store.subscribe(Event("order.placed", "ord-7"), Context({"tenant": "acme"}))
        store.publish()
        store.flush()  # waits for the follow-ups too
        print(issued)           # [('ord-7', 'acme')]
        print(store.metrics())  # Metrics(published=2, processed=2, errors=0)
