"""Transactions: a group of events enqueued all or nothing, then handled as a unit."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

from ._event import Context, Event

if TYPE_CHECKING:
    from ._bus import Bus

__all__ = ["Transaction"]


class Transaction:
    """Buffers events locally until :meth:`commit`; see ``EventStore.begin_transaction``."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._events: list[Event] = []

    def publish(self, event: Event) -> None:
        """Buffer ``event``; nothing reaches the ring or the metrics until commit."""
        if not isinstance(event, Event):
            raise TypeError(f"Transaction.publish() takes an Event, not {type(event).__name__}")
        self._events.append(event)

    def commit(self, ctx: Context | None = None) -> None:
        """Enqueue every buffered event (all or nothing), handle exactly these, in order.

        Raises the first handler exception once all of them were handled. On a back-pressure
        error nothing was enqueued and the events stay buffered, so the commit can be retried.
        """
        events = list(self._events)
        self._bus.run_now(events, ctx, raise_first=True, on_enqueued=self._events.clear)

    def rollback(self) -> None:
        """Discard what is buffered. After a commit there is nothing left to discard."""
        self._events.clear()

    def __len__(self) -> int:
        return len(self._events)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()
