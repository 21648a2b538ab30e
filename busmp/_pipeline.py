"""Running handlers: fan-out, middleware chains and batch chunks, with an observer of outcomes.

The pipeline is the same in the parent (sync mode) and in a worker. It calls handlers and
tells an :class:`Observer` what happened; the observer decides what that means. In sync
mode the observer is the store's accounting (hooks, DLQ, metrics, live); in a worker it
records outcomes to send back over the result ring, and the parent replays them.

``async def`` handlers. A handler (or its middleware chain, or a batch handler) that returns
an awaitable hands the rest of that event's handling to a *continuation* (:class:`ChainRest`,
:class:`BatchRest`): the awaitable, then the event's remaining handlers in order, each awaited
if it returns an awaitable. The pipeline gives the continuation to its ``awaiting`` callback
and moves on to the next event, so the handlers of different events overlap while they await,
while one event's handlers still run (and report) in registration order. What becomes of a
continuation is the caller's: sync mode awaits them all after the run (``publish()`` in a
loop of its own, ``apublish()`` in the caller's), a worker runs them on its event loop, and a
group that must keep its order (a transaction) awaits each one at once.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ._dispatch import BatchRoute, Routes
from ._event import BACKGROUND, Context, Emitter, Event, Result, current_emitter

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = [
    "Item", "Ticket", "Submission", "Run", "Observer", "Counter", "NO_RESULT", "run_runs", "run_chunk", "chunks",
    "Continuation", "ChainRest", "BatchRest", "Awaiting", "returns_awaitable", "followup_run",
]


@dataclass
class Ticket:
    """Collects the failures of one group of events (a transaction, a scheduled event)."""

    errors: list[BaseException] = field(default_factory=list)
    jobs: int = 0  # worker mode: jobs of this group not yet finished
    done: threading.Event = field(default_factory=threading.Event)


class Submission:
    """The future of one submitted event (``EventStore.submit``) and its outcomes so far.

    Outcomes are recorded as the accounting takes them in (:meth:`record`): per-event handlers
    in arrival order, which is registration order because one event's chain always runs in
    order (in sync mode and in a worker alike, also when its handlers await); batch handlers
    by their route index, since batch calls of one event may finish in any order. Whoever
    sees the event leave flight calls :meth:`complete`: the inline executor after the run,
    the bus when a worker's jobs have all given the event's slot back, the bus when
    ``DROP_OLDEST`` or ``drain()`` discards the event. By then every outcome has been
    recorded, so the future never waits for anything and is completed exactly once. The bus
    may hand in the future to use (worker mode: a :class:`~busmp._future.SubmitFuture`, whose
    ``result()`` reads outcomes in the waiting thread for a moment before it sleeps).
    """

    __slots__ = ("future", "results", "batch", "cut")

    def __init__(self, future: Future[list[Result]] | None = None) -> None:
        if future is None:
            # Imported here, in the parent: a worker imports this module and never makes a future.
            from concurrent.futures import Future

            future = Future()
        self.future = future
        self.future.set_running_or_notify_cancel()  # running from the start: cancel() is False
        self.results: list[tuple[Any, BaseException | None]] = []
        self.batch: dict[int, tuple[Any, BaseException | None]] = {}
        self.cut: BaseException | None = None  # a crash, a drain: the event was cut off

    def record(self, result: Any, error: BaseException | None, route: int = -1) -> None:
        """One outcome: of the next per-event handler (``route`` < 0) or of batch route ``route``."""
        if route < 0:
            self.results.append((result, error))
        else:
            self.batch[route] = (result, error)

    def cut_off(self, error: BaseException) -> None:
        """The event will not finish: a worker died with it, or the store closed first."""
        if self.cut is None:
            self.cut = error

    def complete(self, error: BaseException | None = None) -> None:
        """Complete the future from what was recorded, or with ``error`` (a drop, a close)."""
        future = self.future
        if future.done():
            return
        from concurrent.futures import InvalidStateError

        error = error or self.cut
        outcomes = self.results + [self.batch[r] for r in sorted(self.batch)]
        if error is None:
            error = next((e for _, e in outcomes if e is not None), None)
        try:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result([NO_RESULT if r is None else r for r, _ in outcomes])
        except InvalidStateError:
            pass  # another thread completed it first (a close racing the last outcome)


@dataclass(slots=True)
class Item:
    """One decoded event on its way through the pipeline."""

    event: Event
    ctx: Context
    attempts: int = 0          # failures before this delivery (carried through DLQ replays)
    ticket: Ticket | None = None
    token: int = -1            # where the event came from (a sequence number), for reports
    submission: Submission | None = None  # a caller waits for this event's results


#: What a handler that returned None "returned"; Result is immutable, so one instance serves all.
NO_RESULT = Result()


#: Events that share a context, prior attempts and ticket, as a slot or a follow-up holds them;
#: a submitted event is a run of its own, with its :class:`Submission`.
Run = tuple[Sequence[Event], Context, int, Ticket | None, Submission | None]
_NOTHING = object()  # no projection seen yet


def followup_run(event: Event, ctx: Context | None) -> Run:
    """The run of one event a handler emitted (``ctx.emit``), in the parent."""
    return ([event], ctx if ctx is not None else BACKGROUND, 0, None, None)


class Observer(Protocol):
    watches_before: bool  # False: before() need not be called at all

    def before(self, item: Item, handler: str) -> None: ...
    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
              route: int = -1) -> None:
        """One outcome; ``route`` is the batch route's index for a batch handler, else -1."""


class Counter(Observer, Protocol):
    """An observer that may be spared bare successes: with ``quiet``, the pipeline makes no
    :class:`Item` for an event whose handlers all succeed, and reports only their number."""

    quiet: bool

    def count_successes(self, n: int) -> None: ...
    def count_unhandled(self, n: int, projections: set[Hashable]) -> None: ...


def returns_awaitable(result: object) -> bool:
    """Whether a handler's return value must be awaited; a plain ``None`` or ``Result`` is
    told apart without an ABC check (the usual case, checked on every call). ``Awaitable``
    rather than ``inspect.isawaitable``: a worker should not import ``inspect`` to start."""
    return result is not None and type(result) is not Result and isinstance(result, Awaitable)


def run_runs(runs: Sequence[Run], routes: Routes, observer: Counter, emit: Emitter,
             awaiting: Awaiting) -> None:
    """Every per-event handler of every event, then every batch handler (``runs`` is read
    twice, so it is a sequence).

    The hot loop of sync mode: the chain is looked up once per stretch of one projection, and
    an :class:`Item` is made only for an outcome that someone watches. ``emit`` is live
    throughout, for ``ctx.emit``. A handler failure is an ``Exception``: Ctrl-C still stops
    the program. A handler that returns an awaitable hands the rest of its event to
    ``awaiting`` (see the module docstring).
    """
    chains_of, after = routes.chains, observer.after
    before = observer.before if observer.watches_before else None
    quiet = observer.quiet and before is None
    batches = routes.batches
    succeeded = unhandled = 0
    lonely: set[Hashable] = set()  # projections with no handler at all
    reset = current_emitter.set(emit)
    try:
        for events, ctx, attempts, ticket, submission in runs:
            projection: object = _NOTHING
            chain: tuple[tuple[Any, str], ...] = ()
            counting = quiet and submission is None
            for event in events:
                if event.projection is not projection:
                    projection = event.projection
                    chain = chains_of(projection)
                if not chain:
                    if projection not in batches:
                        unhandled += 1
                        lonely.add(projection)
                    continue
                for call, (fn, name) in enumerate(chain, 1):  # call: how many of the chain have started
                    item = None
                    if before is not None:
                        item = Item(event, ctx, attempts, ticket, -1, submission)
                        before(item, name)
                    try:
                        result = fn(ctx, event)
                    except Exception as exc:
                        after(item or Item(event, ctx, attempts, ticket, -1, submission), name, None, exc)
                    else:
                        if result is not None and type(result) is not Result and isinstance(result, Awaitable):
                            awaiting(ChainRest(result, name, chain[call:],
                                               item or Item(event, ctx, attempts, ticket, -1, submission),
                                               observer, emit))
                            break  # the rest of this event's chain runs in the continuation
                        if counting:
                            succeeded += 1
                        else:
                            after(item or Item(event, ctx, attempts, ticket, -1, submission), name,
                                  NO_RESULT if result is None else result, None)
        if routes.batches:
            for index, route, chunk in batch_chunks(runs, routes.batches):
                run_chunk(route, chunk, observer, index=index, awaiting=awaiting, emit=emit)
    finally:
        current_emitter.reset(reset)
        observer.count_successes(succeeded)
        if unhandled:
            observer.count_unhandled(unhandled, lonely)


def batch_chunks(runs: Iterable[Run], batches: dict[Hashable, tuple[BatchRoute, ...]]
                 ) -> Iterable[tuple[int, BatchRoute, Sequence[Item]]]:
    """Group the events of batch projections (first-seen order); cut each group per route
    (with the route's index among its projection's batch routes)."""
    groups: dict[Hashable, list[Item]] = {}
    for events, ctx, attempts, ticket, submission in runs:
        for event in events:
            if event.projection in batches:
                groups.setdefault(event.projection, []).append(Item(event, ctx, attempts, ticket, -1, submission))
    for projection, group in groups.items():
        for index, route in enumerate(batches[projection]):
            for chunk in chunks(group, route.size):
                yield index, route, chunk


def chunks(seq: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start: start + size]


def run_chunk(route: BatchRoute, chunk: Sequence[Item], observer: Observer,
              catch: type[BaseException] = Exception, index: int = -1,
              awaiting: Awaiting | None = None, emit: Emitter | None = None) -> None:
    """One batch call (of batch route ``index``); hooks and outcomes per event of the chunk.
    A call that returns an awaitable goes to ``awaiting`` as a :class:`BatchRest`."""
    for item in chunk:
        observer.before(item, route.name)
    ctx = chunk[0].ctx if chunk else BACKGROUND
    try:
        returned: Any = route.handler(ctx, [item.event for item in chunk])
    except catch as exc:
        deliver_batch(route, chunk, observer, index, None, exc)
        return
    if awaiting is not None and returns_awaitable(returned):
        awaiting(BatchRest(returned, route, chunk, observer, index, emit, catch))
        return
    deliver_batch(route, chunk, observer, index, returned, None)


def deliver_batch(route: BatchRoute, chunk: Sequence[Item], observer: Observer, index: int,
                  returned: Any, error: BaseException | None) -> None:
    """A batch call's outcome, per event of its chunk: what it returned, or its error."""
    results: Sequence[Result | None] = ()
    if error is None and returned is not None:
        if not isinstance(returned, Sequence) or isinstance(returned, (str, bytes)):
            error = TypeError(
                f"batch handler {route.name} returned {type(returned).__name__}; "
                "return a list of Result (one per event) or None"
            )
        else:
            results = returned
    for i, item in enumerate(chunk):
        if error is not None:
            observer.after(item, route.name, None, error, index)
        else:
            result = results[i] if i < len(results) else None
            observer.after(item, route.name, NO_RESULT if result is None else result, None, index)


class ChainRest:
    """The rest of one event's per-event handlers, once one of them returned an awaitable.

    :meth:`run` awaits it and reports its outcome, then calls the remaining handlers in order,
    awaiting those that return awaitables. :meth:`refuse` settles the same calls without an
    event loop, each as a failure with the given error, so that nothing is lost where no loop
    can run them.
    """

    __slots__ = ("awaitable", "name", "rest", "item", "observer", "emit", "catch")

    def __init__(self, awaitable: Awaitable[Any], name: str, rest: Sequence[tuple[Any, str]], item: Item,
                 observer: Observer, emit: Emitter | None, catch: type[BaseException] = Exception) -> None:
        self.awaitable, self.name, self.rest, self.item = awaitable, name, rest, item
        self.observer, self.emit, self.catch = observer, emit, catch

    async def run(self) -> None:
        reset = current_emitter.set(self.emit) if self.emit is not None else None
        try:
            item, observer, catch = self.item, self.observer, self.catch
            await self._finish(self.awaitable, self.name)
            for fn, name in self.rest:
                if observer.watches_before:
                    observer.before(item, name)
                try:
                    result = fn(item.ctx, item.event)
                except catch as exc:
                    observer.after(item, name, None, exc)
                    continue
                if returns_awaitable(result):
                    await self._finish(result, name)
                else:
                    observer.after(item, name, NO_RESULT if result is None else result, None)
        finally:
            if reset is not None:
                current_emitter.reset(reset)

    async def _finish(self, awaitable: Awaitable[Any], name: str) -> None:
        try:
            result = await awaitable
        except self.catch as exc:
            self.observer.after(self.item, name, None, exc)
        else:
            self.observer.after(self.item, name, NO_RESULT if result is None else result, None)

    def refuse(self, error: BaseException) -> None:
        _close(self.awaitable)
        item, observer = self.item, self.observer
        observer.after(item, self.name, None, error)
        for fn, name in self.rest:
            if observer.watches_before:
                observer.before(item, name)
            try:
                result = fn(item.ctx, item.event)
            except self.catch as exc:
                observer.after(item, name, None, exc)
                continue
            if returns_awaitable(result):
                _close(result)
                observer.after(item, name, None, error)
            else:
                observer.after(item, name, NO_RESULT if result is None else result, None)

    def close(self) -> None:
        """Never to be run (the run was interrupted): no 'never awaited' warning."""
        _close(self.awaitable)


class BatchRest:
    """A batch call that returned an awaitable: awaited, then delivered per event."""

    __slots__ = ("awaitable", "route", "chunk", "observer", "index", "emit", "catch")

    def __init__(self, awaitable: Awaitable[Any], route: BatchRoute, chunk: Sequence[Item], observer: Observer,
                 index: int, emit: Emitter | None, catch: type[BaseException] = Exception) -> None:
        self.awaitable, self.route, self.chunk, self.observer = awaitable, route, chunk, observer
        self.index, self.emit, self.catch = index, emit, catch

    async def run(self) -> None:
        reset = current_emitter.set(self.emit) if self.emit is not None else None
        try:
            try:
                returned = await self.awaitable
            except self.catch as exc:
                deliver_batch(self.route, self.chunk, self.observer, self.index, None, exc)
            else:
                deliver_batch(self.route, self.chunk, self.observer, self.index, returned, None)
        finally:
            if reset is not None:
                current_emitter.reset(reset)

    def refuse(self, error: BaseException) -> None:
        _close(self.awaitable)
        deliver_batch(self.route, self.chunk, self.observer, self.index, None, error)

    def close(self) -> None:
        _close(self.awaitable)


Continuation = ChainRest | BatchRest
#: What the pipeline does with a continuation: keep it to await later, await it now, or refuse it.
Awaiting = Callable[[Continuation], None]


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)  # a coroutine never awaited warns unless closed
    if callable(close):
        close()
