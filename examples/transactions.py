"""Transactions: buffer events, then enqueue them all or nothing and handle exactly them."""

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore

log = []
d = Dispatcher()
d.register("order.created", lambda ctx, ev: log.append(("order", ev.data)))


@d.on("invoice.issued")
def issue_invoice(ctx, ev):
    if ev.data is None:
        raise ValueError("an invoice needs an order id")
    log.append(("invoice", ev.data))


with EventStore(d, dlq=DeadLetterQueue()) as store:
    with store.begin_transaction() as tx:  # commit on a clean exit, rollback on an exception
        tx.publish(Event("order.created", "ord-99", id="ev-1"))
        tx.publish(Event("invoice.issued", "ord-99", id="ev-2"))
    print(log)  # [('order', 'ord-99'), ('invoice', 'ord-99')]

    tx = store.begin_transaction()
    tx.publish(Event("order.created", "ord-100"))
    tx.rollback()  # discarded: never enqueued, never counted

    tx = store.begin_transaction()
    tx.publish(Event("invoice.issued", None))
    try:
        tx.commit()  # handles its events, then raises the first handler error
    except ValueError as exc:
        print("commit failed:", exc)  # commit failed: an invoice needs an order id
    print(store.metrics(), len(store.dlq))  # Metrics(published=3, processed=3, errors=1) 1
