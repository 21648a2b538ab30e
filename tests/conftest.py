"""Shared fixtures. Every test is checked for leaks: busmp's shared-memory blocks and threads."""

from __future__ import annotations

import os
import struct
import threading
import time

import pytest

SHM = "/dev/shm"


def busmp_blocks() -> set[str]:
    """busmp's blocks owned by this process: their names carry the owner's pid, except a
    store's statistics block (``busmp_stats_<uid>_<store name>``), whose line 0 does."""
    mine = f"busmp_{os.getpid()}_"
    try:
        names = os.listdir(SHM)
    except FileNotFoundError:  # not Linux
        return set()
    return {name for name in names if name.startswith(mine)
            or name.startswith(f"busmp_stats_{os.getuid()}_") and stats_owner(name) == os.getpid()}


def stats_owner(name: str) -> int | None:
    """The owner pid in a statistics block's line 0 (magic, version, pid, ...)."""
    try:
        with open(os.path.join(SHM, name), "rb") as block:
            head = block.read(24)
    except OSError:
        return None
    return struct.unpack("<QQq", head)[2] if len(head) == 24 else None


def busmp_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("busmp-")}


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def start_method(request):
    """Worker-mode specifications hold under every start method."""
    return request.param


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a busmp shared-memory block or thread behind."""
    blocks_before, threads_before = busmp_blocks(), busmp_threads()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked_blocks = busmp_blocks() - blocks_before
        leaked_threads = busmp_threads() - threads_before
        if not leaked_blocks and not leaked_threads:
            return
        time.sleep(0.02)
    assert not leaked_blocks, f"shared memory left behind: {sorted(leaked_blocks)}"
    assert not leaked_threads, f"threads left behind: {sorted(leaked_threads)}"
