"""Dead letters: every failed (event, handler) pair, inspectable and replayable."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ._event import Context, Event

if TYPE_CHECKING:
    from ._store import EventStore

__all__ = ["DeadLetter", "DeadLetterQueue"]


@dataclass(frozen=True)
class DeadLetter:
    event: Event
    error: BaseException
    failed_at: datetime
    attempts: int
    handler: str

    @classmethod
    def now(cls, event: Event, error: BaseException, attempts: int, handler: str) -> DeadLetter:
        return cls(event, error, datetime.now(timezone.utc), attempts, handler)


class DeadLetterQueue:
    """A thread-safe list of :class:`DeadLetter`, oldest first."""

    def __init__(self) -> None:
        self._entries: list[DeadLetter] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"DeadLetterQueue({len(self)} entries)"

    def add(self, letter: DeadLetter) -> None:
        with self._lock:
            self._entries.append(letter)

    def extend(self, letters: Iterable[DeadLetter]) -> None:
        with self._lock:
            self._entries.extend(letters)

    def entries(self) -> list[DeadLetter]:
        """A snapshot copy; changing it does not change the queue."""
        with self._lock:
            return list(self._entries)

    def drain(self) -> list[DeadLetter]:
        """Remove and return every entry."""
        with self._lock:
            taken, self._entries = self._entries, []
            return taken

    def replay(self, store: EventStore, ctx: Context | None = None) -> None:
        """Re-subscribe every entry into ``store`` and publish; never drops one of them.

        Entries move in rounds that fit the ring's room, with a ``publish()`` after each
        round (which, as any ``publish()``, also hands off other pending events), whatever the
        store's policy. Every entry's ``attempts`` goes up by one per replay call: an entry
        that fails again comes back as a new dead letter with ``attempts + 1``. Entries that
        cannot be enqueued at all (store closed, an event that no longer pickles) stay here
        with ``attempts + 1``, and the first such error is raised after every entry was tried.
        """
        from ._store import bus_of

        bus = bus_of(store)
        left, error = bus.replay(self.drain(), ctx)
        self.extend(DeadLetter.now(letter.event, letter.error, letter.attempts + 1, letter.handler)
                    for letter in left)
        if error is not None:
            raise error
