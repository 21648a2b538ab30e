"""Shared fixtures. Every test is checked for leaks: busmp's shared-memory blocks and threads."""

from __future__ import annotations

import threading
import time

import pytest
from support import shm_blocks


def busmp_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("busmp-")}


@pytest.fixture(params=["fork", "forkserver", "spawn"])
def start_method(request):
    """Worker-mode specifications hold under every start method."""
    return request.param


@pytest.fixture(autouse=True)
def no_leaks():
    """Fail a test that leaves a busmp shared-memory block or thread behind."""
    blocks_before, threads_before = shm_blocks(), busmp_threads()
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        leaked_blocks = shm_blocks() - blocks_before
        leaked_threads = busmp_threads() - threads_before
        if not leaked_blocks and not leaked_threads:
            return
        time.sleep(0.02)
    assert not leaked_blocks, f"shared memory left behind: {sorted(leaked_blocks)}"
    assert not leaked_threads, f"threads left behind: {sorted(leaked_threads)}"
