"""The future that ``EventStore.submit`` hands out: a ``concurrent.futures.Future`` whose
blocking waits first help.

Left alone, a caller blocked in ``result()`` sleeps until the collector thread wakes, takes the
worker's outcome in and completes the future, which then wakes the caller: two thread
wake-ups per round trip. :class:`SubmitFuture` instead has ``result()`` and ``exception()``
first read the workers' result channels in the calling thread for a moment (the helper the
bus gives it, ``Bus.help_wait``: the same reading as ``flush()`` does), so that a short round
trip wakes only the caller. Past that moment, or where the bus does not allow helping (sync
mode, a closing store, inside a handler or hook), they wait as any future does, for what is
left of the caller's ``timeout``.

Only these two blocking waits help. The future is otherwise a plain ``Future``: callbacks,
``asyncio.wrap_future`` and ``concurrent.futures.wait``/``as_completed`` work as ever (they wait
without helping, and the collector completes the future for them). Parent-only: a worker never
imports this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future

from ._event import Result

__all__ = ["SubmitFuture", "Helper", "HELP_SECONDS"]

#: How long a waiting caller reads results itself before it sleeps (as ``flush()`` does).
HELP_SECONDS = 0.002
#: What the bus lends a waiting caller: read results until ``done()`` or ``seconds`` pass.
Helper = Callable[[Callable[[], bool], float], None]


class SubmitFuture(Future[list[Result]]):
    """A submitted event's future (see the module docstring)."""

    def __init__(self, helper: Helper) -> None:
        super().__init__()
        self._helper = helper

    def result(self, timeout: float | None = None) -> list[Result]:
        return super().result(self._help(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._help(timeout))

    def _help(self, timeout: float | None) -> float | None:
        """Help for at most ``HELP_SECONDS`` (and at most ``timeout``); what is left of ``timeout``."""
        if self.done() or (timeout is not None and timeout <= 0):
            return timeout
        started = time.monotonic()
        self._helper(self.done, HELP_SECONDS if timeout is None else min(HELP_SECONDS, timeout))
        if timeout is None:
            return None
        return max(0.0, timeout - (time.monotonic() - started))
