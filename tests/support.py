"""Helpers shared by the worker-mode specifications."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from busmp import DeadLetterQueue, Dispatcher, EventStore

START_METHODS = ["fork", "forkserver", "spawn"]


def make_store(dispatcher: Dispatcher, start_method: str, workers: int = 2, buffer_size: int = 1 << 9,
               **options: object) -> EventStore:
    return EventStore(dispatcher, buffer_size, workers=workers, dlq=DeadLetterQueue(),
                      start_method=start_method, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def running(store: EventStore, timeout: float = 20.0) -> Iterator[EventStore]:
    """``with store:`` but with a deadline on the final drain, so a hang fails the test."""
    try:
        yield store
    except BaseException:
        try:
            store.drain(timeout=2)
        except TimeoutError:
            pass  # the original failure is the one to report
        raise
    store.drain(timeout=timeout)
