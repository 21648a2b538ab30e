"""Back-pressure: what ``subscribe`` does when every slot of the ring is taken."""

from __future__ import annotations

import enum

__all__ = ["OverrunPolicy", "DROP_OLDEST", "BLOCK", "RETURN_ERROR"]


class OverrunPolicy(enum.Enum):
    """What ``subscribe`` does when the ring is full.

    ``BLOCK`` waits for room, which only ``publish()`` makes (it hands pending events to the
    handlers, whose slots then come back). A ring full of events that no one publishes would
    make that wait endless: after ``BLOCK_GRACE_SECONDS`` (1 s) with no ``publish()`` and
    nothing in flight, the wait ends with ``BufferFull`` saying so.
    """

    DROP_OLDEST = "drop_oldest"    # discard the oldest *pending* event (never one a worker holds)
    BLOCK = "block"                # wait for room, up to the timeout or the context deadline
    RETURN_ERROR = "return_error"  # raise BufferFull at once


DROP_OLDEST = OverrunPolicy.DROP_OLDEST
BLOCK = OverrunPolicy.BLOCK
RETURN_ERROR = OverrunPolicy.RETURN_ERROR
