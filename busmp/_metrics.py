"""Counters: the contract's :class:`Metrics` triple and the richer :class:`Stats` snapshot."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

__all__ = ["Metrics", "Stats"]


class Metrics(NamedTuple):
    """``(published, processed, errors)``; see ``EventStore.metrics``."""

    published: int
    processed: int
    errors: int


@dataclass(frozen=True)
class Stats:
    """A point-in-time view of a store, counted in events (never in slots).

    ``EventStore.stats()`` gives the exact counts of the owning process at the moment of the
    call; ``busmp.read_stats(name)`` gives, from any process of the same user, what the store
    last wrote into its shared statistics block (several times a second: see ``updated``).

    Counts, in events:

    * ``published``: accepted subscribes and emitted follow-ups (as in ``metrics()``).
    * ``processed``: completed (event, handler) calls, successful or failed; a batch chunk
      adds its length (as in ``metrics()``).
    * ``errors``: failed (event, handler) calls (as in ``metrics()``).
    * ``dropped``: pending events that ``DROP_OLDEST`` discarded to make room.
    * ``pending``: subscribed and not yet taken by a ``publish()``.
    * ``in_flight``: taken by a ``publish()`` (or committed, scheduled, emitted) and not yet
      fully handled: not every handler of the event has reported back. In worker mode it moves
      as each job a worker finishes is read, also while the chunk slot that holds the events
      waits for its other jobs (``flush()`` waits for the slots too).
    * ``dead_letters``: dead letters made so far, a running total (whatever became of the DLQ
      since: replayed, cleared, or none attached to keep them).
    * ``unhandled``: events published with no handler and no batch handler for their
      projection (they are taken, counted here, and go nowhere).
    * ``free_slots`` / ``slots``: room in the ring for more events / its size
      (``buffer_size``); ``slots - free_slots`` events are held (pending or in flight).
    * ``free_pages`` / ``pages``: arena pages (chunks, events bigger than a slot) not in use /
      in the ring.

    Workers (empty tuples in sync mode), one entry per worker position (a replacement takes
    the position of the worker it replaces):

    * ``workers``: how many worker processes the store runs (0: sync mode).
    * ``per_worker``: events each position has handled (its earlier processes included).
    * ``worker_pids``: the pid of each position's process (0 while one starts).
    * ``worker_states``: ``"starting"``, ``"idle"``, ``"busy"`` (running a job) or ``"dead"``.
    * ``worker_since``: when each position entered that state (``time.time()``): a worker busy
      for long is running a slow (or stuck) handler.

    Identity and rates:

    * ``name``: the store's name (``EventStore(..., name=...)`` or a generated one).
    * ``pid``: the process that owns the store.
    * ``state``: ``"open"``, ``"closing"`` (in ``drain()``) or ``"closed"``.
    * ``published_rate``, ``processed_rate``, ``errors_rate``, ``dropped_rate``: events per
      second over about the last second.
    * ``updated``: when these values were taken (``time.time()``).
    """

    published: int
    processed: int
    errors: int
    dropped: int
    pending: int
    in_flight: int
    dead_letters: int
    free_slots: int
    slots: int
    workers: int
    per_worker: tuple[int, ...] = field(default=())
    free_pages: int = 0
    pages: int = 0
    unhandled: int = 0
    name: str = ""
    pid: int = 0
    state: str = "open"
    worker_pids: tuple[int, ...] = field(default=())
    worker_states: tuple[str, ...] = field(default=())
    worker_since: tuple[float, ...] = field(default=())
    published_rate: float = 0.0
    processed_rate: float = 0.0
    errors_rate: float = 0.0
    dropped_rate: float = 0.0
    updated: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Every field, as JSON-ready values (tuples become lists): what ``--json`` prints."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}
