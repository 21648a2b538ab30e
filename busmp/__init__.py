"""busmp: an in-memory event bus whose handlers run in worker processes.

Data flow (``workers=N``)::

   parent process                                               worker process k
   ──────────────                                               ────────────────
   subscribe(ev) ─check, encode─▶ [slot ring: header | slots | pages] ┐
   subscribe_many(evs) ─ chunks ─▶   (free lists, pending: parent)    │ read in place
                                                                      ▼
   publish() ─ plan jobs (_jobs) ─ feed ─▶ [job channel k] ──▶ decode ─▶ middleware ─▶ handlers
                                                                                           │
   collector thread ◀─ [result channel k: outcomes, emitted events, DONE] ◀────────────────┘
   (or, for its first 2 ms, the thread waiting in flush() reads the channels itself)
     ├─ hooks (on_before / on_after / on_error) run here, in the parent
     ├─ DeadLetterQueue, metrics, statistics; slots freed on DONE; more jobs fed
     └─ emitted events ─▶ straight back into the slot ring as new work

With ``workers=0`` the same pipeline runs inline: ``subscribe`` still pickles each event (the
proof that it could travel) but the slot keeps the event object, and ``publish()`` hands the
objects to the handlers itself. See ``_ring`` for the memory layout and who writes which word.
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

if TYPE_CHECKING:
    from ._store import EventStore

__all__ = [
    "BLOCK", "DROP_OLDEST", "RETURN_ERROR",
    "BatchHandler", "BufferFull", "BusError", "Context", "DeadLetter", "DeadLetterQueue",
    "Dispatcher", "Event", "EventStore", "Handler", "HandlerPanic", "Metrics", "Middleware",
    "OverrunPolicy", "RemoteError", "Result", "Stats", "StoreClosed", "Timer", "Transaction",
    "WorkerCrashed", "constant_backoff", "exponential_backoff", "with_retry",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # EventStore brings the parent's whole machinery (planner, pool, numpy) with it. It is
    # imported on first use, so that a worker process, which imports this package on its
    # way to busmp._worker, starts without it: under spawn that is ~40 % of its start-up.
    if name == "EventStore":
        from ._store import EventStore

        globals()["EventStore"] = EventStore
        return EventStore
    raise AttributeError(f"module 'busmp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "EventStore"])
