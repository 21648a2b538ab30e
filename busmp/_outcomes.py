"""The parent's side of every handler outcome: lifecycle hooks, dead letters and counters.

Outcomes arrive here live in sync mode (the pipeline calls :class:`Accounting` directly) and
replayed from result rings in worker mode; either way hooks run in the process that owns the
store. A hook that raises is logged and does not disturb the bus.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from ._dlq import DeadLetter
from ._event import Context, Event, Result
from ._pipeline import NO_RESULT, Item

if TYPE_CHECKING:
    from ._dlq import DeadLetterQueue

__all__ = ["Accounting", "Tally", "BeforeHook", "AfterHook", "ErrorHook", "inside_hook"]

log = logging.getLogger("busmp")

BeforeHook = Callable[[Context, Event], None]
AfterHook = Callable[[Context, Event, Result, "BaseException | None"], None]
ErrorHook = Callable[[Context, Event, BaseException], None]


class Accounting:
    """Hooks, counters and the dead-letter queue of one store."""

    def __init__(self) -> None:
        self.dlq: DeadLetterQueue | None = None
        self._lock = threading.Lock()
        self.before_hooks: list[BeforeHook] = []
        self.after_hooks: list[AfterHook] = []
        self.error_hooks: list[ErrorHook] = []
        self.processed = 0
        self.errors = 0
        self.dead_letters = 0  # made so far, a running total (whatever the DLQ did with them)
        self.unhandled = 0     # events published with no handler for their projection
        #: Whether anyone looks at individual outcomes (else workers may send counts only),
        #: and whether on_before hooks exist; kept as plain words, read on every publish.
        self.wants_results = False
        self.watches_before = False

    def add_hook(self, hooks: list[Any], hook: Any) -> None:
        """Append ``hook`` to one of the three hook lists."""
        hooks.append(hook)
        self.wants_results = bool(self.before_hooks or self.after_hooks or self.error_hooks)
        self.watches_before = bool(self.before_hooks)

    def before(self, item: Item, handler: str) -> None:
        for hook in self.before_hooks:
            self._call_hook(hook, item.ctx, item.event)

    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
              route: int = -1) -> None:
        """An outcome seen live (sync mode): also recorded for a submitted event's future."""
        if item.submission is not None:
            item.submission.record(result, error, route)
        self.settle(item, handler, result, error, counted=False)

    def count(self, processed: int, errors: int) -> None:
        with self._lock:
            self.processed += processed
            self.errors += errors

    def settle(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
               counted: bool) -> None:
        """One outcome: counters (unless ``counted`` already), dead letter, hooks."""
        if not counted:
            self.count(1, error is not None)
        if error is not None:
            self.dead_letter(item.event, error, item.attempts + 1, handler)
            if item.ticket is not None:
                item.ticket.errors.append(error)
            for hook in self.error_hooks:
                self._call_hook(hook, item.ctx, item.event, error)
        for after_hook in self.after_hooks:
            self._call_hook(after_hook, item.ctx, item.event, NO_RESULT if result is None else result, error)

    def tally(self) -> Tally:
        """An observer for one run in one thread: successes nobody watches are only counted,
        locally, and added here once at the end (``Tally.close``)."""
        return Tally(self)

    def count_unhandled(self, n: int, what: object) -> None:
        """``n`` events had no handler and no batch handler (``what``: their projections, or
        a description): counted, and logged at DEBUG, since a typo in a projection looks so."""
        with self._lock:
            self.unhandled += n
        log.debug("busmp: %d event(s) published with no handler for %s; registered projections "
                  "get handlers with Dispatcher.register", n, what)

    def dead_letter(self, event: Event, error: BaseException, attempts: int, handler: str) -> None:
        with self._lock:
            self.dead_letters += 1
        queue = self.dlq
        if queue is not None:
            queue.add(DeadLetter.now(event, error, attempts, handler))

    @staticmethod
    def _call_hook(hook: Callable[..., None], *args: object) -> None:
        _hooks.depth = getattr(_hooks, "depth", 0) + 1
        try:
            hook(*args)
        except Exception:
            log.exception("busmp hook %r raised; the bus goes on", hook)
        except BaseException:
            # SystemExit or KeyboardInterrupt from a hook: in the main thread it is the
            # program's to act on; in busmp's own threads (the collector) it would end the
            # thread that every later outcome needs, so it is logged like any failure.
            if threading.current_thread() is threading.main_thread():
                raise
            log.exception("busmp hook %r raised a BaseException in a busmp thread; ignored", hook)
        finally:
            _hooks.depth -= 1


class Tally:
    """Sync mode's observer: hooks and failures go to the accounting at once, bare successes
    are counted here without a lock (one thread owns a tally) and added when it closes."""

    __slots__ = ("_accounting", "quiet", "succeeded", "watches_before")

    def __init__(self, accounting: Accounting) -> None:
        self._accounting = accounting
        self.quiet = not accounting.wants_results
        self.watches_before = accounting.watches_before
        self.succeeded = 0

    def before(self, item: Item, handler: str) -> None:
        if not self.quiet:
            self._accounting.before(item, handler)

    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
              route: int = -1) -> None:
        if self.quiet and error is None and item.submission is None:
            self.succeeded += 1
        else:
            self._accounting.after(item, handler, result, error, route)

    def count_successes(self, n: int) -> None:
        self.succeeded += n

    def count_unhandled(self, n: int, projections: set[Hashable]) -> None:
        self._accounting.count_unhandled(n, "projection(s) " + ", ".join(sorted(map(repr, projections))))

    def close(self) -> None:
        self._accounting.count(self.succeeded, 0)
        self.succeeded = 0


_hooks = threading.local()


def inside_hook() -> bool:
    """Whether this thread is running a lifecycle hook right now."""
    return getattr(_hooks, "depth", 0) > 0
