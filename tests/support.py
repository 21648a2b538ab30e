"""Helpers shared by the specifications."""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import psutil

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore

START_METHODS = ["fork", "forkserver", "spawn"]
SHM = "/dev/shm"  # where POSIX shared memory lives on Linux


def shm_blocks(prefix: str | None = None) -> set[str]:
    """Shared-memory blocks whose names start with ``prefix``; by default busmp's blocks owned
    by this process. Their names carry the owner's pid (other processes may run busmp too),
    except a store's statistics block (``busmp_stats_<uid>_<store name>``), whose line 0 does."""
    try:
        names = os.listdir(SHM)
    except FileNotFoundError:  # not Linux
        return set()
    if prefix is not None:
        return {name for name in names if name.startswith(prefix)}
    mine, stats = f"busmp_{os.getpid()}_", f"busmp_stats_{os.getuid()}_"
    return {name for name in names if name.startswith(mine)
            or (name.startswith(stats) and stats_owner(name) == os.getpid())}


def stats_owner(name: str) -> int | None:
    """The owner pid in a statistics block's line 0 (magic, version, pid, ...)."""
    try:
        with open(os.path.join(SHM, name), "rb") as block:
            head = block.read(24)
    except OSError:
        return None
    return struct.unpack("<QQq", head)[2] if len(head) == 24 else None


def make_store(dispatcher: Dispatcher, start_method: str, workers: int = 2, buffer_size: int = 1 << 9,
               **options: object) -> EventStore:
    return EventStore(dispatcher, buffer_size, workers=workers, dlq=DeadLetterQueue(),
                      start_method=start_method, **options)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate: Callable[[], object], seconds: float) -> bool:
    """Poll ``predicate`` until it holds or ``seconds`` pass; whether it held."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


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


# -- handlers that hang, for handler_timeout (the process pool's specs and the Ray backend's) --
def hangs_on_hang(ctx, ev):
    if ev.id == "hang":
        time.sleep(30)
    return None


def second_step(ctx, ev):
    return None


def hangs_in_batch(ctx, events):
    time.sleep(30)


def counting_dispatcher(counter: Counter[str], lock: threading.Lock, projection: str = "p") -> Dispatcher:
    """A dispatcher whose one handler, of ``projection``, counts each event's id (under ``lock``)."""
    d = Dispatcher()

    def count(ctx: object, ev: Event) -> None:
        with lock:
            counter[ev.id] += 1

    d.register(projection, count)
    return d


def run_threads(targets: list[Callable[[], object]], limit: float = 30.0) -> None:
    """Run each target in a thread of its own and wait for all; a thread still running after
    ``limit`` seconds fails the spec (a deadlock)."""
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(limit)
    assert not any(t.is_alive() for t in threads), "a thread is still running (deadlock?)"
