"""Creating, attaching and releasing POSIX shared-memory blocks, with names busmp can find.

Every block busmp creates is named ``busmp_<owner pid>_<token>_<suffix>``, so a store can sweep
up blocks a dead worker left behind, and a test can tell busmp's blocks from anyone else's.
The creating process registers each block with multiprocessing's resource tracker, which
unlinks whatever is left if every process of the bus is killed.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory

__all__ = ["PREFIX", "new_prefix", "create", "attach", "release", "unlink_quietly"]

PREFIX = "busmp_"


def new_prefix() -> str:
    """A fresh name prefix for one store's blocks."""
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


def create(name: str, size: int) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(name=name, create=True, size=max(size, 1))


def attach(name: str) -> shared_memory.SharedMemory:
    return shared_memory.SharedMemory(name=name, create=False)


def release(shm: shared_memory.SharedMemory, unlink: bool) -> None:
    """Close ``shm`` and, for its owner, unlink it. Safe to call twice."""
    try:
        shm.close()
    except BufferError:
        # A numpy view still points into the block; the mapping goes when the view does.
        pass
    if unlink:
        unlink_quietly(shm)


def unlink_quietly(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
