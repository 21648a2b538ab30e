"""The collector: the parent thread that takes in what workers report.

Its loop has three named steps, as CPython's process-pool manager thread has:

1. :meth:`Collector.wait_for_wakeup`: sleep on the notify pipe (every worker writes a byte
   after a job), the stop pipe, and one descriptor per worker that fires when it dies.
2. :meth:`Collector.read_results`: read every result channel: outcomes are settled through the
   bus's accounting (hooks, DLQ, metrics: here, in the parent), DONE records finish jobs and
   free their slots, follow-ups are placed into free slots as new work.
3. :meth:`Collector.watch_deaths`: a worker that died is charged for what it held, and replaced
   (at once, or when its back-off is over: the loop starts due replacements as it comes round);
   with a ``handler_timeout``, a worker whose current call is past its deadline is killed here
   (``ProcessExecutor.check_deadlines``), and its death is then handled as any other.

A thread waiting in ``flush()`` or in a submitted event's ``result()`` may do step 2 itself for
a moment (``read_for``): a short round trip then wakes one thread instead of two. ``reading``
makes sure one thread at a time reads the channels (each channel has one reader). While such a
thread reads, the collector is not woken by the notify pipe at all (on Linux): the pipe sits in
an epoll set of its own (the *gate*) that the collector sleeps on, and the reading thread takes
the pipe out of the gate, and puts it back once it has read what the bytes so far announced.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import RemoteError
from .._event import Event
from .._transport.codec import DECODE_HANDLER, UNDECODABLE, decode_event
from .._transport.records import (
    ASYNC, ASYNC_REC, DONE, DONE_REC, FOLLOWUP, FOLLOWUP_HEAD, FOLLOWUPS_TAKEN, LANE_DONE, OUTCOME,
    OUTCOME_HEAD, PARKED, PARKED_REC,
)
from .._transport.packing import Encoded
from .executor import Host
from .jobs import Job
from .processes import WorkerHandle, is_dead

if TYPE_CHECKING:
    from .pool import ProcessExecutor

__all__ = ["Collector", "Book", "take_record"]

log = logging.getLogger("busmp")
POLL_SECONDS = 1.0  # a wake-up with nothing to read re-checks every worker, to be safe
NOTIFY_READ = 65536  # bytes a notify-pipe read asks for
OUTCOME_JOB = struct.Struct("<Q")  # the job an OUTCOME record names (the start of OUTCOME_HEAD)


class Collector:
    def __init__(self, pool: ProcessExecutor, name: str) -> None:
        self._pool = pool
        self.reading = threading.Lock()
        self._notify_r, self.notify_w = pool.mp.Pipe(duplex=False)
        self._notify_fd = self._notify_r.fileno()  # valid until close(); read on every round trip
        os.set_blocking(self._notify_fd, False)
        # The gate (see the module docstring); where there is no epoll, the pipe itself.
        self._gate = select.epoll() if hasattr(select, "epoll") else None
        if self._gate is not None:
            self._gate.register(self._notify_fd, select.EPOLLIN)
        self._wake_fd = self._gate.fileno() if self._gate is not None else self._notify_fd
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        # With a handler_timeout the loop also wakes often enough to kill an overdue call soon
        # after its deadline (a tenth of the timeout late at most, and at least every 10 ms).
        timeout = pool.handler_timeout
        self._poll = POLL_SECONDS if not timeout else min(POLL_SECONDS, max(0.01, timeout / 10))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """End the thread (from any other thread); from then on the caller reads results."""
        os.write(self._stop_w, b"\x01")
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        with self.reading:
            pass  # a flush() still reading has finished, and sees the pool closing from now on

    def wake(self) -> None:
        """Make the collector look (a thread reading for itself meanwhile looks too)."""
        try:
            os.write(self.notify_w.fileno(), b"\x01")
        except (BlockingIOError, OSError):
            pass  # a full pipe wakes it already; a closed one: the store is closing

    def close(self) -> None:
        if self._gate is not None:
            self._gate.close()
        self._notify_r.close()
        self.notify_w.close()
        os.close(self._stop_r)
        os.close(self._stop_w)

    # -- the loop ---------------------------------------------------------------------
    def _run(self) -> None:
        watched: tuple[int, ...] = ()
        poller = select.poll()
        while True:
            due = self._pool.start_due()  # replacements whose back-off is over
            held = self._pool.hold_due()
            if held is not None:
                due = held if due is None else min(due, held)
            handles = [h for h in self._pool.handles if h.process is not None]
            fds = (self._wake_fd, self._stop_r, *(h.watch_fd for h in handles))
            if fds != watched:  # a worker was replaced: watch its descriptor instead
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                watched = fds
            ready = self.wait_for_wakeup(poller, self._poll if due is None else min(due, self._poll))
            try:
                with self.reading:
                    if self._wake_fd in ready:
                        self._drain_notify()
                    self.read_results()
                    if self._stop_r in ready:
                        return  # shutdown() takes over the workers from here
                    self.watch_deaths(handles, ready)
                    self._pool.check_deadlines()
            except Exception:  # a bug in here must not stop every later result from arriving
                log.exception("busmp collector: unexpected error; carrying on")

    def wait_for_wakeup(self, poller: Any, seconds: float) -> set[int]:
        # The notify pipe is drained once ``reading`` is held: a thread in read_for() that
        # held it meanwhile may not have read what the bytes announced yet.
        return {fd for fd, _ in poller.poll(max(1, int(seconds * 1000)))}

    def watch_deaths(self, handles: list[WorkerHandle], ready: set[int]) -> None:
        # A wake-up by results alone costs no check per worker; the poll timeout checks all.
        for handle in handles:
            if (handle.watch_fd in ready or not ready) and is_dead(handle):
                self._pool.on_death(handle)

    def read_for(self, done: Callable[[], bool], seconds: float) -> None:
        """Read results in the calling thread for up to ``seconds`` or until ``done()`` (the
        collector meanwhile only watches for dying workers). If the collector is reading, this
        waits for it within the same ``seconds``: its round is short, and may complete ``done``.

        Between reads it sleeps on the notify pipe, which meanwhile wakes this thread alone
        (it is out of the collector's gate). Polling the channels instead, giving up the CPU
        between looks, measured faster on an idle machine and far slower on a loaded one: a
        yielding thread queues behind every other process on its CPU, a sleeping one is woken
        ahead of them.
        """
        until = time.monotonic() + seconds
        if not self.reading.acquire(timeout=seconds):
            return
        try:
            if self._pool.closing:
                return
            handles = self._pool.handles
            self._mute(True)
            try:
                while not done():
                    if any(map(self._pool.has_news, handles)):
                        self.read_results()
                        continue
                    remaining = until - time.monotonic()
                    if remaining <= 0:
                        break
                    # News (records, a lane word) comes before its byte, and while we wait
                    # workers send one after each lane job too (WANT_PROGRESS, see ``attend``).
                    if select.select([self._notify_fd], [], [], remaining)[0]:
                        self._drain_notify()
            finally:
                # What the bytes in the pipe announced is read before the pipe wakes the
                # collector again; a byte written after the drain wakes it, as it should.
                if self._drain_notify() and any(map(self._pool.has_news, handles)):
                    self.read_results()
                self._mute(False)
        finally:
            self.reading.release()

    def _mute(self, muted: bool) -> None:
        """Take the notify pipe out of the collector's gate (or put it back). Under ``reading``."""
        if self._gate is not None:
            self._gate.modify(self._notify_fd, 0 if muted else select.EPOLLIN)

    def _drain_notify(self) -> bool:
        """Empty the notify pipe; whether it held anything. A read that returns less than it
        asked for has emptied the pipe: no second read (and no BlockingIOError) is needed."""
        drained, fd = False, self._notify_fd
        try:
            while True:
                got = len(os.read(fd, NOTIFY_READ))
                drained = drained or got > 0
                if got < NOTIFY_READ:
                    return drained
        except BlockingIOError:
            return drained

    # -- results ----------------------------------------------------------------------
    def read_results(self) -> None:
        for handle in self._pool.handles:
            self.read_channel(handle)
        self._pool.place_backlog()
        self._pool.write_followup_room()
        self._pool.end_hold()

    def read_channel(self, handle: WorkerHandle) -> None:
        """Take in every record of ``handle``'s result channel, then harvest its lane jobs
        that were done before the reading began (see ``pool``)."""
        pool, results = self._pool, handle.results
        lane_word = handle.jobs.control(LANE_DONE)  # first: the worker stores it after its records
        while (record := results.get()) is not None:
            kind, payload = record
            if kind == OUTCOME:
                pool.lane_job_for_outcome(OUTCOME_JOB.unpack_from(payload)[0])
            elif kind == FOLLOWUP:
                handle.followups_taken += 1
            take_record(pool, kind, payload)
        results.set_control(FOLLOWUPS_TAKEN, handle.followups_taken)  # what ctx.emit there checks
        pool.harvest(handle, lane_word)


class Book(Protocol):
    """An executor's job bookkeeping, as the records of a worker reach it (the process pool's,
    the Ray executor's)."""

    host: Host
    jobs: dict[int, Job]
    backlog: deque[Encoded]

    def settle(self, job: Job, pos: int, name: str, result: Any, error: BaseException | None,
               counted: bool, cut: bool = False) -> None: ...
    def finish(self, job: Job) -> None: ...
    def park(self, job: Job) -> None: ...


def take_record(book: Book, kind: int, payload: bytes) -> None:
    """One record a worker reported: a finished job, an outcome, an awaiting event, a parked
    job, or a follow-up."""
    accounting = book.host.accounting
    if kind == DONE:
        job_id, quiet, _ = DONE_REC.unpack(payload)
        accounting.count(quiet, 0)
        job = book.jobs.get(job_id)
        if job is not None:
            book.finish(job)
    elif kind == OUTCOME:
        job_id, pos, name_len, _failed, call = OUTCOME_HEAD.unpack_from(payload)
        name = payload[OUTCOME_HEAD.size: OUTCOME_HEAD.size + name_len].decode()
        result, error = _load_outcome(payload[OUTCOME_HEAD.size + name_len:], name)
        job = book.jobs.get(job_id)
        if job is not None:
            if job.awaiting is not None and pos in job.awaiting:
                job.awaiting[pos] = call + 1  # from the worker's event loop, in call order
            else:
                job.reported_at = job.reported_at + 1 if job.reported[0] == pos else 1
                job.reported = (pos, call)
            book.settle(job, pos, name, result, error, counted=False)
    elif kind == ASYNC:
        job_id, pos, call = ASYNC_REC.unpack(payload)
        job = book.jobs.get(job_id)
        if job is not None:
            if job.awaiting is None:
                job.awaiting = {}
            job.awaiting[pos] = call
    elif kind == PARKED:
        job_id, quiet = PARKED_REC.unpack(payload)
        accounting.count(quiet, 0)
        job = book.jobs.get(job_id)
        if job is not None:
            book.park(job)
    elif kind == FOLLOWUP:
        (flags,) = FOLLOWUP_HEAD.unpack_from(payload)
        _accept_followup(book, bytes(payload[FOLLOWUP_HEAD.size:]), flags)


def _accept_followup(book: Book, payload: bytes, flags: int) -> None:
    try:
        event, _ctx, _attempts = decode_event(payload, flags)
    except Exception as exc:
        book.host.accounting.dead_letter(Event(UNDECODABLE, payload), exc, 1, DECODE_HANDLER)
        return
    book.host.count_followup()
    book.backlog.append((payload, flags, hash(event.projection), [], 1))


def _load_outcome(body: bytes, handler: str) -> tuple[Any, BaseException | None]:
    """A worker's (result, error); what cannot be rebuilt here becomes a RemoteError."""
    try:
        result, error = pickle.loads(body)
    except Exception as exc:
        return None, RemoteError(type(exc).__name__, f"the outcome of handler {handler} could not be "
                                 f"unpickled in the parent: {exc}")
    return result, error
