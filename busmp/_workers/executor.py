"""The seam between the store and whatever runs handlers.

The store owns the ring, the pending list, back-pressure and accounting; an executor only
takes *claimed* slots and gets their events handled, reporting every outcome to the store's
:class:`~busmp._accounting.Accounting` and every finished event to ``Host.finished``.

* :class:`InlineExecutor` (``workers=0``) decodes and runs them in the calling thread.
* ``ProcessExecutor`` (``_pool``) hands them to worker processes through job rings.
* A Ray executor will hand them to actors behind the same two methods.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .._outcomes import Accounting
from .._dispatch import Routes
from .._event import BACKGROUND, Context, Event
from .._pipeline import Run, Ticket, run_runs

__all__ = ["Executor", "Host", "InlineExecutor"]


class Host(Protocol):
    """What an executor may ask of its store."""

    accounting: Accounting

    def routes(self) -> Routes: ...
    def claim_runs(self, slots: Sequence[int], ticket: Ticket | None) -> tuple[int, list[Run]]: ...
    def accept_followup(self, event: Event, ctx: Context | None) -> None: ...
    def finished(self, count: int) -> None: ...


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

    def shutdown(self, timeout: float | None) -> None:
        """Finish or dead-letter what is in flight, then stop and release everything."""

    def abandon(self) -> None:
        """Stop and release everything at once, reporting nothing (the store is gone)."""

    def per_worker(self) -> tuple[int, ...]: ...


class InlineExecutor:
    """Sync mode: handlers run in the thread that calls ``publish()``."""

    workers = 0

    def __init__(self, host: Host) -> None:
        self._host = host

    def check_routes(self, routes: Routes, key: object) -> None:
        return None  # handlers run here: nothing travels

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        self.run(*self._host.claim_runs(slots, ticket))

    def run(self, count: int, runs: list[Run]) -> None:
        """Handle ``count`` events and, breadth first, every follow-up they emit."""
        host = self._host
        while count:
            followups: list[Run] = []

            def emit(event: Event, ctx: Context) -> None:
                host.accept_followup(event, ctx)
                followups.append(([event], ctx if ctx is not None else BACKGROUND, 0, None))

            tally = host.accounting.tally()
            try:
                run_runs(runs, host.routes(), tally, emit)
            except BaseException:
                host.finished(count + len(followups))  # interrupted: nothing stays in flight
                raise
            finally:
                tally.close()
            host.finished(count)
            count, runs = len(followups), followups

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        return None  # inline work is done when submit() returns

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        return None

    def shutdown(self, timeout: float | None) -> None:
        return None

    def abandon(self) -> None:
        return None

    def per_worker(self) -> tuple[int, ...]:
        return ()
