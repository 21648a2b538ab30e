"""Counters: the contract's :class:`Metrics` triple and the richer :class:`Stats` snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Metrics", "Stats"]


class Metrics(NamedTuple):
    published: int
    processed: int
    errors: int


@dataclass(frozen=True)
class Stats:
    """A point-in-time view of a store."""

    published: int
    processed: int
    errors: int
    dropped: int
    pending: int        # subscribed, not yet published
    in_flight: int      # published (or committed/emitted), not yet fully handled
    dead_letters: int   # entries in the attached DLQ now
    free_slots: int
    slots: int
    workers: int
    per_worker: tuple[int, ...] = field(default=())  # events handled by each worker
    free_pages: int = 0  # arena pages (chunks, events bigger than a slot) not in use
    pages: int = 0
