"""Running handlers: fan-out, middleware chains and batch chunks, with an observer of outcomes.

The pipeline is the same in the parent (sync mode) and in a worker. It calls handlers and
tells an :class:`Observer` what happened; the observer decides what that means. In sync
mode the observer is the store's accounting (hooks, DLQ, metrics, live); in a worker it
records outcomes to send back over the result ring, and the parent replays them.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._dispatch import BatchRoute, Routes
from ._event import BACKGROUND, Context, Emitter, Event, Result, current_emitter

__all__ = ["Item", "Ticket", "Run", "Observer", "Counter", "NO_RESULT", "run_runs", "run_chunk", "chunks"]


@dataclass
class Ticket:
    """Collects the failures of one group of events (a transaction, a scheduled event)."""

    errors: list[BaseException] = field(default_factory=list)
    jobs: int = 0  # worker mode: jobs of this group not yet finished
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class Item:
    """One decoded event on its way through the pipeline."""

    event: Event
    ctx: Context
    attempts: int = 0          # failures before this delivery (carried through DLQ replays)
    ticket: Ticket | None = None
    token: int = -1            # where the event came from (a sequence number), for reports


#: What a handler that returned None "returned"; Result is immutable, so one instance serves all.
NO_RESULT = Result()


#: Events that share a context, prior attempts and ticket, as a slot or a follow-up holds them.
Run = tuple[Sequence[Event], Context, int, Ticket | None]
_NOTHING = object()  # no projection seen yet


class Observer(Protocol):
    watches_before: bool  # False: before() need not be called at all

    def before(self, item: Item, handler: str) -> None: ...
    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None) -> None: ...


class Counter(Observer, Protocol):
    """An observer that may be spared bare successes: with ``quiet``, the pipeline makes no
    :class:`Item` for an event whose handlers all succeed, and reports only their number."""

    quiet: bool

    def count_successes(self, n: int) -> None: ...
    def count_unhandled(self, n: int, projections: set[Hashable]) -> None: ...


def run_runs(runs: Sequence[Run], routes: Routes, observer: Counter, emit: Emitter) -> None:
    """Every per-event handler of every event, then every batch handler (``runs`` is read
    twice, so it is a sequence).

    The hot loop of sync mode: the chain is looked up once per stretch of one projection, and
    an :class:`Item` is made only for an outcome that someone watches. ``emit`` is live
    throughout, for ``ctx.emit``. A handler failure is an ``Exception``: Ctrl-C still stops
    the program.
    """
    chains_of, after = routes.chains, observer.after
    before = observer.before if observer.watches_before else None
    quiet = observer.quiet and before is None
    batches = routes.batches
    succeeded = unhandled = 0
    lonely: set[Hashable] = set()  # projections with no handler at all
    reset = current_emitter.set(emit)
    try:
        for events, ctx, attempts, ticket in runs:
            projection: object = _NOTHING
            chain: tuple[tuple[Any, str], ...] = ()
            for event in events:
                if event.projection is not projection:
                    projection = event.projection
                    chain = chains_of(projection)
                if not chain:
                    if projection not in batches:
                        unhandled += 1
                        lonely.add(projection)
                    continue
                for fn, name in chain:
                    item = None
                    if before is not None:
                        item = Item(event, ctx, attempts, ticket)
                        before(item, name)
                    try:
                        result = fn(ctx, event)
                    except Exception as exc:
                        after(item or Item(event, ctx, attempts, ticket), name, None, exc)
                    else:
                        if quiet:
                            succeeded += 1
                        else:
                            after(item or Item(event, ctx, attempts, ticket), name,
                                  NO_RESULT if result is None else result, None)
        if routes.batches:
            for route, chunk in batch_chunks(runs, routes.batches):
                run_chunk(route, chunk, observer)
    finally:
        current_emitter.reset(reset)
        observer.count_successes(succeeded)
        if unhandled:
            observer.count_unhandled(unhandled, lonely)


def batch_chunks(runs: Iterable[Run], batches: dict[Hashable, tuple[BatchRoute, ...]]
                 ) -> Iterable[tuple[BatchRoute, Sequence[Item]]]:
    """Group the events of batch projections (first-seen order); cut each group per route."""
    groups: dict[Hashable, list[Item]] = {}
    for events, ctx, attempts, ticket in runs:
        for event in events:
            if event.projection in batches:
                groups.setdefault(event.projection, []).append(Item(event, ctx, attempts, ticket))
    for projection, group in groups.items():
        for route in batches[projection]:
            for chunk in chunks(group, route.size):
                yield route, chunk


def chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start: start + size]


def run_chunk(route: BatchRoute, chunk: Sequence[Item], observer: Observer,
              catch: type[BaseException] = Exception) -> None:
    """One batch call; hooks and outcomes per event of the chunk."""
    for item in chunk:
        observer.before(item, route.name)
    ctx = chunk[0].ctx if chunk else BACKGROUND
    error: BaseException | None = None
    results: Sequence[Result | None] = ()
    try:
        returned = route.handler(ctx, [item.event for item in chunk])
        if returned is not None:
            if not isinstance(returned, Sequence) or isinstance(returned, (str, bytes)):
                raise TypeError(
                    f"batch handler {route.name} returned {type(returned).__name__}; "
                    "return a list of Result (one per event) or None"
                )
            results = returned
    except catch as exc:
        error = exc
    for i, item in enumerate(chunk):
        if error is not None:
            observer.after(item, route.name, None, error)
        else:
            result = results[i] if i < len(results) else None
            observer.after(item, route.name, NO_RESULT if result is None else result, None)
