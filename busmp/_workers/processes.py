"""Worker processes: their channels, starting, telling death, stopping.

A worker's death is decided by the process itself, never by what a helper reports: on Linux a
*pidfd* of the worker becomes readable only when that very process has exited (a recycled pid
cannot fool it). ``multiprocessing``'s sentinel is not enough under forkserver: when the fork
server itself is killed, every sentinel fires and every exit code reads 255 while the workers
live on, and a replacement would then share a channel with a live reader. Where there is no
pidfd (not Linux), the sentinel is all there is.

A worker that exits by itself before it reports ready (its pid in its job channel's control
words, ``PID``, written once it has attached to the bus) did not start: the main module or the
routes could not be loaded there. Such deaths, several in a row, mean every replacement would
die the same way. A process killed by a signal is never a start-up failure, whenever it dies:
it is replaced however often it happens, after a short back-off when deaths come quickly.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .._transport.channel import Channel
from .._transport.records import SLEEP, Entry
from .._transport.ring import SPIN_ALLOWED
from .jobs import Job

__all__ = ["WorkerHandle", "LaneJob", "new_handle", "start", "is_dead", "reap", "reset_channels", "stop", "kill",
           "ring_doorbell", "wake"]

#: A lane job as the parent keeps it until the worker counts it done: its id, its entries, how
#: many events they hold, and the routing snapshot (and key) it was written with.
LaneJob = tuple[int, list[Entry], int, tuple[Any, object]]

JOB_CHANNEL_BYTES_PER_SLOT = 48  # a job entry per slot, with room for its record
RESULT_CHANNEL_BYTES = 1 << 22


@dataclass(eq=False)
class WorkerHandle:
    """One worker position: its channels and doorbell outlive the processes that fill it."""

    index: int
    jobs: Channel
    results: Channel
    doorbell_r: Any
    doorbell_w: Any
    process: Any = None
    pidfd: int | None = None
    outstanding: dict[int, Job] = field(default_factory=dict)
    routes_key: object = None
    queued: int = 0            # events in outstanding jobs, for balancing
    parked: int = 0            # outstanding jobs whose handlers only await (not queued work)
    crashed_handled: int = 0   # events handled by earlier processes in this position
    started_at: float = 0.0
    previous_pid: int = 0      # the process a pending replacement takes over from
    restart_at: float | None = None  # a replacement is due then (a back-off after quick deaths)
    quick_deaths: int = 0      # deaths in a row of processes that lived less than a second here
    followups_taken: int = 0   # FOLLOWUP records read from its current process
    overdue: int | None = None  # the CALL_DEADLINE word of the call the parent killed it for
    # Lane jobs written to its current process and not yet seen done, in order; how many of
    # them the parent has seen done (LANE_DONE's count, unwrapped) and the quiet calls counted.
    lane: deque[LaneJob] = field(default_factory=deque)
    lane_done: int = 0
    lane_quiet: int = 0
    rung: int = 0  # the SLEEP word the doorbell was last rung for

    @property
    def watch_fd(self) -> int:
        """The descriptor that becomes readable when the process is gone."""
        return self.pidfd if self.pidfd is not None else int(self.process.sentinel)


def new_handle(mp: Any, index: int, prefix: str, slot_count: int) -> WorkerHandle:
    jobs = Channel.create(f"{prefix}_j{index}", JOB_CHANNEL_BYTES_PER_SLOT * slot_count + (1 << 20))
    try:
        results = Channel.create(f"{prefix}_r{index}", RESULT_CHANNEL_BYTES)
    except BaseException:
        jobs.close()
        raise
    doorbell_r, doorbell_w = mp.Pipe(duplex=False)
    os.set_blocking(doorbell_w.fileno(), False)
    return WorkerHandle(index, jobs, results, doorbell_r, doorbell_w)


def start(mp: Any, handle: WorkerHandle, target: Any, args: tuple[Any, ...]) -> None:
    """Start a process in ``handle``'s position (its channels must be empty)."""
    process = mp.Process(target=target, name=f"busmp-worker-{handle.index}", daemon=True,
                         args=(handle.jobs.name, handle.results.name, handle.doorbell_r, *args))
    process.start()
    handle.process = process
    handle.routes_key = None
    handle.started_at = time.monotonic()
    try:
        handle.pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        handle.pidfd = None  # not Linux >= 5.3 (or already gone: the sentinel says so too)


def is_dead(handle: WorkerHandle) -> bool:
    """Whether the process in ``handle`` has really exited (see the module docstring)."""
    if handle.process is None:
        return True
    if handle.pidfd is not None:
        return bool(select.select([handle.pidfd], [], [], 0)[0])
    return not handle.process.is_alive()


def reset_channels(handle: WorkerHandle) -> None:
    """Empty a dead worker's channels for its replacement, and what the parent keeps of their
    words (lane jobs done, the sleep it rang for) with them: a position that waits out a
    back-off must read its reset words as nothing new, not against the dead worker's counts."""
    handle.jobs.reset()
    handle.results.reset()
    handle.lane_done = handle.lane_quiet = handle.rung = 0


def reap(handle: WorkerHandle) -> tuple[int, int | None]:
    """Collect a dead process; its pid and exit code (negative: the signal), None if unknown."""
    process = handle.process
    pid = process.pid
    process.join(1.0)
    exitcode = process.exitcode
    if handle.pidfd is not None:
        # Under forkserver a killed fork server reports 255 for workers it can no longer
        # wait for; a pidfd that fired means the process did exit, with a status we lost.
        os.close(handle.pidfd)
        handle.pidfd = None
    try:
        process.close()
    except ValueError:
        pass  # multiprocessing thinks it still runs (its helper died): nothing to release
    handle.process = None
    return pid, exitcode


def stop(handle: WorkerHandle, deadline: float) -> None:
    """Wait for the process to exit until ``deadline``, then SIGKILL it (a worker holds nothing
    that needs a clean exit: the parent owns every shared block) and wait for the kernel."""
    if handle.process is None:
        return
    if _wait_dead(handle, max(0.0, deadline - time.monotonic())):
        return
    try:
        os.kill(handle.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_dead(handle, 5.0)


def _wait_dead(handle: WorkerHandle, seconds: float) -> bool:
    if handle.pidfd is not None:
        return bool(select.select([handle.pidfd], [], [], seconds)[0])
    handle.process.join(seconds)
    return not handle.process.is_alive()


def kill(handle: WorkerHandle) -> None:
    """SIGKILL the process in ``handle``: through its pidfd where there is one (a pid the
    kernel gave to another process since cannot be hit)."""
    try:
        if handle.pidfd is not None:
            signal.pidfd_send_signal(handle.pidfd, signal.SIGKILL)
        elif handle.process is not None:
            os.kill(handle.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # gone already: its death is noticed all the same


def wake(handle: WorkerHandle) -> None:
    """Ring the doorbell of a worker that sleeps on it, once per sleep; one that is awake
    finds the new record by itself (see ``worker``). Where readers may look only after a
    kernel wake-up (not x86-64, see ``_transport.ring``), every time."""
    if SPIN_ALLOWED:
        word = handle.jobs.control(SLEEP)
        if not word & 1 or word == handle.rung:
            return
        handle.rung = word
    ring_doorbell(handle)


def ring_doorbell(handle: WorkerHandle) -> None:
    try:
        os.write(handle.doorbell_w.fileno(), b"\x01")
    except BlockingIOError:
        pass  # a full pipe wakes the worker already


def close_handle(handle: WorkerHandle) -> None:
    handle.jobs.close()
    handle.results.close()
    handle.doorbell_r.close()
    handle.doorbell_w.close()
    if handle.pidfd is not None:
        os.close(handle.pidfd)
        handle.pidfd = None
