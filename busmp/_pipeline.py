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

__all__ = ["Item", "Ticket", "Observer", "NO_RESULT", "run_items", "chunks"]


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


class Observer(Protocol):
    watches_before: bool  # False: before() need not be called at all

    def before(self, item: Item, handler: str) -> None: ...
    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None) -> None: ...
    def event_done(self, item: Item) -> None: ...


def run_items(items: Iterable[Item], routes: Routes, observer: Observer, emit: Emitter,
              catch: type[BaseException] = Exception, batches: bool = True) -> None:
    """Every per-event handler of every item, then (if ``batches``) every batch handler.

    ``emit`` is live throughout, for ``ctx.emit``. ``catch`` is what counts as a handler
    failure: ``Exception`` in the parent (Ctrl-C still stops the program), ``BaseException``
    in a worker (the worker must outlive its handlers).
    """
    chains_of, after, done = routes.chains, observer.after, observer.event_done
    before = observer.before if observer.watches_before else None
    reset = current_emitter.set(emit)
    try:
        for item in items:
            for fn, name in chains_of(item.event.projection):
                if before is not None:
                    before(item, name)
                try:
                    result = fn(item.ctx, item.event)
                except catch as exc:
                    after(item, name, None, exc)
                else:
                    after(item, name, NO_RESULT if result is None else result, None)
            done(item)
        if batches and routes.batches:
            for route, chunk in batch_chunks(items, routes.batches):
                run_chunk(route, chunk, observer, catch)
    finally:
        current_emitter.reset(reset)


def batch_chunks(items: Iterable[Item], batches: dict[Hashable, tuple[BatchRoute, ...]]
                 ) -> Iterable[tuple[BatchRoute, Sequence[Item]]]:
    """Group items by projection (first-seen order) and cut each group per batch route."""
    groups: dict[Hashable, list[Item]] = {}
    for item in items:
        if item.event.projection in batches:
            groups.setdefault(item.event.projection, []).append(item)
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
