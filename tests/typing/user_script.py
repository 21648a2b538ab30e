"""A user's program, type-checked by ``mypy --strict`` from outside the repository (.ci/run).

It passes only when mypy sees busmp's own annotations through the installed package: if
busmp cannot be found, the import fails; if it is found but untyped (everything ``Any``),
the ``assert_type`` lines fail and the ``type: ignore`` below becomes an unused ignore,
which ``--strict`` reports.
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

from busmp import Context, Dispatcher, Event, EventStore, Metrics, Result

d = Dispatcher()


@d.on("user_created")
def greet(ctx: Context, ev: Event) -> Result:
    return Result("greeted", ev.data)


assert_type(greet(Context(), Event("user_created")), Result)  # @d.on keeps the function's type

with EventStore(d) as store:
    store.subscribe(Event("user_created", {"id": "u-42"}, id="evt1"))
    taken = store.publish()
    assert_type(taken, int)
    metrics = store.metrics()
    assert_type(metrics, Metrics)
    published, processed, errors = metrics
    assert_type(published, int)
    # The deliberate mistake: a str is not an Event. mypy must see it, or this ignore is unused.
    store.subscribe("user_created")  # type: ignore[arg-type]
