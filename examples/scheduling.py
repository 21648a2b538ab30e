"""Scheduling: handle an event at a time or after a delay; cancel it before it fires."""

import threading
from datetime import datetime, timedelta, timezone

from busmp import Dispatcher, Event, EventStore

fired = []
soon_fired = threading.Event()
d = Dispatcher()


@d.on("reminder")
def remind(ctx, ev):
    fired.append(ev.id)
    if ev.id == "soon":
        soon_fired.set()


with EventStore(d) as store:
    soon = store.schedule_after(0.05, Event("reminder", id="soon"))         # seconds or a timedelta
    later = store.schedule(datetime.now(timezone.utc) + timedelta(hours=1),  # a datetime or time.time()
                           Event("reminder", id="later"))
    print(store.schedule_after(0, Event("reminder", id="now")))  # None
    print(later.cancel())  # True
    soon_fired.wait(5)
    print(fired)           # ['now', 'soon']
    print(soon.cancel())   # False
