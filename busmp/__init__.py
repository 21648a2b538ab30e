"""busmp: an in-memory event bus whose handlers run in worker processes.

Data flow (``workers=N``)::

   parent process                                                worker process k
   ──────────────                                                ────────────────
   EventStore ── the contract's names, arguments checked
     │
   Bus (_bus) ── the seam: lock, slot allocator, the one slot-writing path, in-flight counts
     subscribe(ev) ─check, encode─▶ [slot ring: header | slots | pages] ┐   (_transport)
     subscribe_many(evs) ─chunks─▶                                    │ read in place
                                                                      ▼
     publish() ─▶ executor (_workers): plan jobs, feed ─▶ [job channel k] ─▶ decode ─▶ middleware ─▶ handlers
                                                     (async def handlers: on the worker's event loop) │
                                                                                                      │
   collector thread ◀── [result channel k: outcomes, follow-ups, DONE] ◀─────────────────────────────┘
   (or, for its first moments, the thread waiting in flush() reads the channels itself)
     ├─ hooks (on_before / on_after / on_error) run here, in the parent
     ├─ DeadLetterQueue, metrics; slots given back to the Bus on DONE; more jobs fed
     ├─ submitted events' futures complete as their slots come back (asyncio: wrap_future)
     └─ follow-ups (ctx.emit) ─▶ back into the slot ring as new work

   stats block busmp_stats_<uid>_<name> (one 64-byte line per writer): the parent's stats
   ticker writes the counts, each worker its own line; read_stats / python -m busmp read it

With ``workers=0`` the inline executor runs the same pipeline in ``publish()``: ``subscribe``
still pickles each event (the proof that it could travel) but the slot keeps the event object.
``_transport.ring`` draws the memory layout and says which process writes which word.
"""

from typing import TYPE_CHECKING, Any

from ._dispatch import BatchHandler, Dispatcher, Handler, Middleware
from ._dlq import DeadLetter, DeadLetterQueue
from ._errors import BufferFull, BusError, HandlerPanic, RemoteError, StoreClosed, WorkerCrashed
from ._event import Context, Event, Result
from ._metrics import Metrics, Stats
from ._middleware import constant_backoff, exponential_backoff, with_retry
from ._policy import BLOCK, DROP_OLDEST, RETURN_ERROR, OverrunPolicy
from ._schedule import Timer
from ._transaction import Transaction
from ._watch import read_stats

if TYPE_CHECKING:
    from ._store import EventStore

__all__ = [
    "BLOCK", "DROP_OLDEST", "RETURN_ERROR",
    "BatchHandler", "BufferFull", "BusError", "Context", "DeadLetter", "DeadLetterQueue",
    "Dispatcher", "Event", "EventStore", "Handler", "HandlerPanic", "Metrics", "Middleware",
    "OverrunPolicy", "RemoteError", "Result", "Stats", "StoreClosed", "Timer", "Transaction",
    "WorkerCrashed", "constant_backoff", "exponential_backoff", "read_stats", "with_retry",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # EventStore brings the parent's whole machinery (planner, pool, numpy) with it. It is
    # imported on first use, so that a worker process, which imports this package on its
    # way to busmp._workers.worker, starts without it (a large share of a spawned start-up).
    if name == "EventStore":
        from ._store import EventStore

        globals()["EventStore"] = EventStore
        return EventStore
    raise AttributeError(f"module 'busmp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "EventStore"])
