"""How a producing thread takes busmp's locks: never by sleeping on one.

With the GIL, a thread that sleeps in ``acquire`` is *handed* the lock when its holder
releases it, while it cannot run: it must first win the GIL, which the releaser still holds
and keeps using. On two cores the woken thread takes the lock at once and then waits for the
GIL, so the releaser, at its next ``acquire``, finds the lock taken and sleeps too: from then
on nearly every acquisition is contended and costs two context switches (a *lock convoy*),
and several producing threads together go slower than one. ``take`` acquires only while
running: a thread that finds the lock taken gives up the GIL for a moment (so that the
holder, which needs it, can finish) and tries again; the lock is never handed to it asleep.

Only the producers' paths (``subscribe``, ``publish``) take locks so. Others (the collector,
threads waiting for room or results) keep blocking acquisition: a thread that only tried
would lose every race to a producer holding the GIL, and wait a switch interval each time.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["take"]


class _Lock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...


def take(lock: _Lock) -> None:
    """Acquire ``lock`` (re-entrant or not) without sleeping on it; release it as usual."""
    while not lock.acquire(False):
        time.sleep(0)  # the GIL is free for the holder, which cannot finish without it
