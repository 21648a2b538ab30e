"""Back-pressure: what subscribe does when the ring is full. buffer_size counts events."""

from busmp import BLOCK, RETURN_ERROR, BufferFull, Dispatcher, Event, EventStore

handled = []
d = Dispatcher()
d.register("tick", lambda ctx, ev: handled.append(ev.data))

# DROP_OLDEST, the default: a full ring discards its oldest *pending* event to take the new one.
with EventStore(d, buffer_size=4) as store:                          # room for 4 events
    print(store.subscribe_many(Event("tick", n) for n in range(6)))  # 6
    print(store.stats().dropped)                                     # 2
    store.publish()
    print(handled)                                                   # [2, 3, 4, 5]
    print(store.metrics())  # Metrics(published=6, processed=4, errors=0)

# RETURN_ERROR: BufferFull at once; subscribe_many accepts what fits and says how many.
with EventStore(d, buffer_size=4, policy=RETURN_ERROR) as store:
    print(store.subscribe_many(Event("tick", n) for n in range(6)))  # 4
    try:
        store.subscribe(Event("tick", 6))
    except BufferFull:
        print("BufferFull: publish() to make room")  # BufferFull: publish() to make room
    store.publish()

# BLOCK: wait for room, up to `timeout` (or the context's deadline).
with EventStore(d, buffer_size=4, policy=BLOCK) as store:
    store.subscribe_many(Event("tick", n) for n in range(4))
    try:
        store.subscribe(Event("tick", 4), timeout=0.05)  # nobody publishes: no room comes
    except TimeoutError:
        print("TimeoutError after 0.05 s")  # TimeoutError after 0.05 s
    store.publish()
