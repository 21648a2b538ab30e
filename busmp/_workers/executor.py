"""The seam between the bus and whatever runs handlers: the two protocols, and sync mode.

The :class:`~busmp._bus.Bus` owns the ring, the pending list, back-pressure and accounting.
An executor takes *claimed* slots (already counted in flight) and gets their events handled,
reporting every outcome to ``host.accounting`` and giving slots and in-flight counts back
through the :class:`Host` methods. That is all it may ask of the bus, and all that a new
executor (such as a Ray one) implements against:

* :class:`InlineExecutor` (``workers=0``) runs them in the calling thread.
* ``ProcessExecutor`` (``pool``) hands them to worker processes through job channels.

What each :class:`Executor` method promises is written on it. Threads: ``submit`` and
``check_routes`` run in any producer thread (several at once); ``help_collect`` in a thread
waiting in ``flush()``; ``shutdown`` in the thread that drains; ``abandon`` in the finalizer.
Hooks run in whichever of these threads takes an outcome in (see ``pool`` for the list).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Protocol

from .._dispatch import Routes
from .._event import Context, Event
from .._outcomes import Accounting
from .._pipeline import Continuation, Item, Run, Submission, Ticket, followup_run, run_runs
from .._transport.packing import Encoded
from .._transport.slots import Slots
from .._transport.stats import StatsBlock

__all__ = ["Executor", "Host", "InlineExecutor"]


class Host(Protocol):
    """What an executor may ask of the bus (the :class:`~busmp._bus.Bus` is one)."""

    accounting: Accounting
    slots: Slots
    name: str                # the store's name, for log lines
    stats_block: StatsBlock  # the shared statistics; a worker position's line is the executor's
                             # to write while no process fills it (see _transport.stats)

    def routes(self) -> Routes:
        """The routing snapshot for the next dispatch."""
    def routes_and_key(self) -> tuple[Routes, object]:
        """The routing snapshot, and a key that changes whenever it must be shipped anew."""
    def claim_runs(self, slots: Sequence[int], ticket: Ticket | None) -> tuple[int, list[Run]]:
        """Sync mode: the events of claimed slots, which are given back at once."""
    def submission_at(self, slot: int) -> Submission | None:
        """The submission of the event in ``slot``, if it was submitted and is still in flight."""
    def item_at(self, slot: int, seq: int, index: int, ticket: Ticket | None) -> Item:
        """Event ``index`` of ``slot``, decoded in the parent (for hooks and dead letters)."""
    def release(self, slots: list[int]) -> None:
        """Every event of these slots is handled: reuse them (and count the events done)."""
    def place_followups(self, encoded: list[Encoded]) -> list[int]:
        """Write follow-ups into free slots (as many as fit); the slots written."""
    def count_followup(self) -> None:
        """A follow-up was emitted: published and in flight from now on."""
    def accept_followup(self, event: Event, ctx: Context | None) -> None:
        """Check a follow-up emitted in this process, then count it."""
    def finished(self, count: int) -> None:
        """``count`` events left flight without a slot to release (follow-ups, dead letters)."""
    def handled_early(self, change: int) -> None:
        """``change`` more events are handled in slots the executor still holds (negative as
        those slots are released); for ``stats().in_flight`` only, ``flush()`` waits for slots."""
    def followups_done(self, count: int) -> None:
        """``count`` follow-ups were handled (sync mode) or dropped at close (worker mode)."""
    def followup_room(self) -> int:
        """How many more follow-ups may be emitted now."""


class Executor(Protocol):
    workers: int

    def check_routes(self, routes: Routes, key: object) -> None:
        """Raise ``TypeError`` naming the handler if ``routes`` cannot reach the handlers;
        called before any event is taken, so a refused publish changes nothing."""

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        """Get the events in ``slots`` handled; they are already counted as in flight."""

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        """Block until every event submitted with ``ticket`` is handled."""

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        """Take in outcomes in the calling thread for up to ``seconds`` or until ``done()``."""

    def attend(self, change: int) -> None:
        """A thread of the bus starts (+1) or stops (-1) waiting for events to finish (for
        room, for idleness): progress should then be reported without delay. Called with the
        bus's lock held, so it takes no lock of the executor's."""

    def shutdown(self, timeout: float | None) -> None:
        """Finish or dead-letter what is in flight, then stop and release everything."""

    def abandon(self) -> None:
        """Stop and release everything at once, reporting nothing (the store is gone)."""

    def detach(self) -> None:
        """Last of all, once the store has released its memory: let go of what outlives the
        store (the Ray backend shuts down a cluster it started, which takes a second or two)."""

    def per_worker(self) -> tuple[int, ...]: ...


IN_LOOP = ("an async def handler cannot be awaited by publish() inside a running event loop "
           "(sync mode); use `await store.apublish()` (or asubmit), or workers=N")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _all(continuations: list[Continuation]) -> None:
    await asyncio.gather(*(c.run() for c in continuations))


def _await_now(continuation: Continuation) -> None:
    """An ordered group's continuation: run to the end before the next event (a transaction)."""
    if _loop_running():
        continuation.refuse(RuntimeError(
            "a transaction's async def handler cannot be awaited inside a running event loop in "
            "sync mode; commit from a thread (`await asyncio.to_thread(tx.commit)`) or use workers=N"))
    else:
        asyncio.run(continuation.run())


def place_backlog(host: Host, backlog: deque[Encoded], submit: Callable[[list[int]], None]) -> None:
    """Move waiting follow-ups into free slots, oldest first, and ``submit`` them; the rest wait
    for released slots. Shared by the executors whose follow-ups come back from other processes."""
    placed = host.place_followups(list(backlog))
    for _ in placed:
        backlog.popleft()
    if placed:
        submit(placed)


class InlineExecutor:
    """Sync mode: handlers run in the thread that calls ``publish()``."""

    workers = 0

    def __init__(self, host: Host) -> None:
        self._host = host

    def check_routes(self, routes: Routes, key: object) -> None:
        return None  # handlers run here: nothing travels

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        """Run the events of ``slots`` now. ``async def`` handlers are awaited in an event loop
        of this call's own (a group, ``ticket``, awaits each one at once, to keep its order);
        inside a running loop, where none can be made, they fail with a ``RuntimeError``
        naming ``apublish()`` (``Bus.publish`` refuses such events beforehand where it can
        tell)."""
        count, runs = self._host.claim_runs(slots, ticket)
        self._drive(self._rounds(count, runs, ordered=ticket is not None))

    def finish_one(self, deferred: list[Continuation], followups: list[Run]) -> None:
        """The rest of a one-event publish that ``Bus.publish_inline`` ran itself: await what
        its handler returned (as ``submit`` does), let the event leave flight, then handle the
        follow-ups it emitted (``followups`` is the list its emitter appends to), breadth first."""
        host = self._host
        try:
            if deferred:
                self._await(deferred)
        except BaseException:  # Ctrl-C while awaiting: nothing stays in flight
            for continuation in deferred:
                continuation.close()
            host.finished(1 + len(followups))
            host.followups_done(len(followups))
            raise
        host.finished(1)
        if followups:
            self._drive(self._rounds(len(followups), followups, ordered=False, of_followups=True))

    def _drive(self, rounds: Generator[list[Continuation], None, None]) -> None:
        """Await each round's continuations until the rounds are over."""
        deferred = next(rounds, None)
        while deferred is not None:
            try:
                self._await(deferred)
            except BaseException as exc:  # Ctrl-C while awaiting: the rounds settle what they hold
                rounds.throw(exc)
                raise
            deferred = next(rounds, None)

    @staticmethod
    def _await(deferred: list[Continuation]) -> None:
        """One round's continuations, in a loop of this call's own; refused inside a running one."""
        if _loop_running():
            for continuation in deferred:
                continuation.refuse(RuntimeError(IN_LOOP))
        else:
            asyncio.run(_all(deferred))

    async def asubmit(self, slots: Sequence[int]) -> None:
        """``submit`` for ``apublish()``: continuations are awaited in the caller's loop, all of
        one round at once, so that handlers of different events overlap while they await."""
        count, runs = self._host.claim_runs(slots, None)
        rounds = self._rounds(count, runs, ordered=False)
        deferred = next(rounds, None)
        while deferred is not None:
            try:
                await _all(deferred)
            except BaseException as exc:  # cancelled: the rounds settle what they hold
                rounds.throw(exc)
                raise
            deferred = next(rounds, None)

    def _rounds(self, count: int, runs: list[Run], ordered: bool,
                of_followups: bool = False) -> Generator[list[Continuation], None, None]:
        """Handle ``count`` events and, breadth first, every follow-up they emit; yields each
        round's continuations for the caller to await (an ordered group awaits them at once).
        ``of_followups``: the first round is follow-ups already (else the published events).
        Submitted events' futures complete once their round is over, before the events leave
        flight. An exception thrown in (or raised here) ends the rounds with nothing in
        flight and every future completed."""
        host = self._host
        while count:
            followups: list[Run] = []

            def emit(event: Event, ctx: Context) -> None:
                host.accept_followup(event, ctx)
                followups.append(followup_run(event, ctx))  # noqa: B023 - called within this iteration only

            submissions = [run[4] for run in runs if run[4] is not None]
            deferred: list[Continuation] = []
            tally = host.accounting.tally()
            try:
                run_runs(runs, host.routes(), tally, emit, _await_now if ordered else deferred.append)
                if deferred:
                    yield deferred
            except BaseException as exc:
                for continuation in deferred:
                    continuation.close()
                for submission in submissions:  # interrupted (Ctrl-C in a handler): never pending
                    submission.complete(exc)
                host.finished(count + len(followups))  # interrupted: nothing stays in flight
                host.followups_done(len(followups) + (count if of_followups else 0))
                raise
            finally:
                tally.close()
            for submission in submissions:
                submission.complete()
            host.finished(count)
            if of_followups:
                host.followups_done(count)
            count, runs, of_followups = len(followups), followups, True

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        return None  # inline work is done when submit() returns

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        return None

    def attend(self, change: int) -> None:
        return None

    def shutdown(self, timeout: float | None) -> None:
        return None

    def abandon(self) -> None:
        return None

    def detach(self) -> None:
        return None

    def per_worker(self) -> tuple[int, ...]:
        return ()
