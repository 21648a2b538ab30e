"""The process executor: starts, feeds, watches and replaces the worker processes.

``submit`` (any parent thread) turns claimed slots into jobs and writes them into the job
channels, then rings each worker's doorbell once. The *collector* thread sleeps on one notify
pipe plus every worker's process sentinel; when woken it replays results through the store's
accounting (hooks, DLQ, metrics run here, in the parent), places emitted follow-ups into free
slots, and frees slots whose jobs are all done. A worker that dies is noticed by its sentinel:
what it held becomes dead letters (``WorkerCrashed``) and a replacement starts.

Slots are reference-counted: an event may sit in one EVENTS job and in one BATCH job per batch
handler of its projection; its slot returns to the free list when the last of them is done.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cloudpickle

from .._outcomes import Accounting
from .._transport.channel import Channel
from .._transport.codec import DECODE_HANDLER, UNDECODABLE, decode_event
from .._dispatch import Routes, handler_name
from .._transport.packing import Encoded
from .._errors import BusError, RemoteError, StoreClosed, WorkerCrashed
from .jobs import Job, Planner
from .._event import Event
from .._pipeline import Item, Ticket
from .._transport.records import (
    BATCH_HEAD, CUR_ERRORS, CUR_JOB, CUR_POS, CUR_PROCESSED, DONE, DONE_REC, EMIT, EMIT_HEAD,
    EVENTS, HANDLED, JOB_HEAD, OUTCOME, OUTCOME_HEAD, PID, ROUTES, ROUTES_HEAD, STOP, pack_entries,
)
from .._transport.ring import SlotRing
from .worker import worker_main

__all__ = ["ProcessExecutor", "DEFAULT_START_METHOD", "PoolHost"]

log = logging.getLogger("busmp")

#: forkserver: the store's parent has threads (collector, timers), and forking a threaded
#: process can deadlock the child; forkserver forks from a clean single-threaded server that
#: has busmp and numpy preloaded, so workers start nearly as fast as with fork.
DEFAULT_START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
FEED_DEPTH = 2            # jobs a worker holds at once (one running, one queued); the rest wait here
EARLY_DEATHS_ALLOWED = 3  # workers that die before starting, in a row, before we give up
CRASH_HANDLER = "busmp.worker"


class PoolHost(Protocol):
    accounting: Accounting

    def routes_and_key(self) -> tuple[Routes, object]: ...
    def item_at(self, slot: int, seq: int, index: int, ticket: Ticket | None) -> Item: ...
    def release(self, slots: list[int]) -> None: ...
    def finished(self, count: int) -> None: ...
    def place_followups(self, encoded: list[Encoded]) -> list[int]: ...
    def count_followup(self) -> None: ...


@dataclass(eq=False)
class WorkerHandle:
    index: int
    jobs: Channel
    results: Channel
    doorbell_r: Any
    doorbell_w: Any
    process: Any = None
    outstanding: dict[int, Job] = field(default_factory=dict)
    routes_key: object = None
    queued: int = 0  # events in outstanding jobs, for balancing
    crashed_handled: int = 0  # events handled by earlier processes in this position


class ProcessExecutor:
    def __init__(self, host: PoolHost, ring: SlotRing, workers: int, start_method: str | None,
                 prefix: str) -> None:
        self.workers = workers
        self._host = host
        self._ring = ring
        self._prefix = prefix
        self._ctx: Any = mp.get_context(start_method or DEFAULT_START_METHOD)
        if self._ctx.get_start_method() == "forkserver":
            # numpy too: busmp's workers no longer import it, but the main module a worker
            # re-imports often does, and the server then pays for it once, not every worker.
            self._ctx.set_forkserver_preload(["busmp._workers.worker", "numpy"])
        self._lock = threading.RLock()
        # Held by whoever reads the result channels: the collector thread, or a flush() that
        # reads for itself for a moment (see help_collect). Each channel has one reader at a time.
        self._reading = threading.Lock()
        self._refs = [0] * ring.slot_count  # jobs that name each slot
        self._planner = Planner(ring, workers)
        self._jobs: dict[int, Job] = {}
        self._routes_cache: tuple[object, bytes] | None = None
        self._backlog: deque[Encoded] = deque()  # follow-ups waiting for a free slot
        self._unassigned: deque[Job] = deque()   # planned jobs no worker holds yet (see _feed)
        self._closing = False
        self._broken: str | None = None
        self._early_deaths = 0
        self._last_death: tuple[int, int | None] = (0, None)
        self._final_counts: tuple[int, ...] | None = None  # per_worker() once the channels are gone
        self._released = False
        self._notify_r, self._notify_w = self._ctx.Pipe(duplex=False)
        os.set_blocking(self._notify_r.fileno(), False)
        self._stop_r, self._stop_w = os.pipe()
        self._handles: list[WorkerHandle] = []
        try:
            for i in range(workers):
                self._handles.append(self._new_handle(i))
                self._start(self._handles[i])
        except BaseException:
            self._release_resources()
            raise
        self._collector = threading.Thread(target=self._collect, name=f"busmp-collector-{prefix}", daemon=True)
        self._collector.start()

    # -- workers ------------------------------------------------------------------
    def _new_handle(self, i: int) -> WorkerHandle:
        capacity = 48 * self._ring.slot_count + (1 << 20)
        jobs = Channel.create(f"{self._prefix}_j{i}", capacity)
        results = Channel.create(f"{self._prefix}_r{i}", 1 << 22)
        doorbell_r, doorbell_w = self._ctx.Pipe(duplex=False)
        os.set_blocking(doorbell_w.fileno(), False)
        return WorkerHandle(i, jobs, results, doorbell_r, doorbell_w)

    def _start(self, handle: WorkerHandle) -> None:
        handle.process = self._ctx.Process(
            target=worker_main, name=f"busmp-worker-{handle.index}", daemon=True,
            args=(self._ring.name, handle.jobs.name, handle.results.name, handle.doorbell_r,
                  self._notify_w, os.getpid()))
        handle.process.start()
        handle.routes_key = None

    def _ring_doorbell(self, handle: WorkerHandle) -> None:
        try:
            os.write(handle.doorbell_w.fileno(), b"\x01")
        except BlockingIOError:
            pass  # a full pipe wakes the worker already

    # -- submitting ---------------------------------------------------------------
    def check_routes(self, routes: Routes, key: object) -> None:
        self._routes_payload(routes, key)

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        listed = list(slots)
        refused: TypeError | None = None
        with self._lock:
            self._ring.sync_header()
            routes, key = self._host.routes_and_key()
            try:
                self._routes_payload(routes, key)
            except TypeError as exc:  # a handler registered since publish() checked the routes
                refused = exc
            jobs = self._planner.plan(listed, routes, ticket, [h.queued for h in self._handles])
            if ticket is not None:
                ticket.jobs += len(jobs)
            refs, covered = self._refs, 0
            for job in jobs:
                for slot in job.slots:  # a job names each slot once
                    refs[slot] += 1
                covered += len(job.entries)
            idle = [s for s in listed if refs[s] == 0] if covered < len(listed) or routes.batches else []
            for job in jobs:
                job.routes = (routes, key)
                self._jobs[job.id] = job
                if refused is not None:
                    continue
                if ticket is not None:  # a group stays on its one worker, in order
                    self._write_job(self._handles[job.worker], job)
                else:
                    self._unassigned.append(job)
            if refused is None:
                self._feed({job.worker for job in jobs} if ticket is not None else set())
        if len(idle):
            self._host.release(idle)  # no handler wants these events
        if refused is not None:
            for job in jobs:  # nothing vanishes: no worker can run these, so they are dead letters
                self._charge(job, 0, refused)
            raise refused
        if ticket is not None and ticket.jobs == 0:
            ticket.done.set()
        if self._broken is not None:
            self._fail_orphans()  # nothing vanishes: what no worker can take becomes dead letters
            raise BusError(self._broken)

    def _feed(self, woken: set[int]) -> None:
        """Give each live worker jobs until it holds FEED_DEPTH, one at a time in turn, then
        ring the doorbells. Under the lock. Feeding as workers finish, rather than dealing
        everything out at publish, keeps a worker the machine slows down from holding work
        the other one could do."""
        live = [h for h in self._handles if h.process is not None]
        while self._unassigned and live:
            live = [h for h in live if len(h.outstanding) < FEED_DEPTH]
            for handle in live:
                if not self._unassigned:
                    break
                job = self._unassigned.popleft()
                job.worker = handle.index
                self._write_job(handle, job)
                woken.add(handle.index)
        for i in woken:
            self._ring_doorbell(self._handles[i])

    def _ship_routes(self, handle: WorkerHandle, routes: Routes, key: object) -> None:
        if handle.routes_key == key:
            return
        handle.jobs.put(ROUTES, self._routes_payload(routes, key), self._waiter(handle))
        handle.routes_key = key

    def _routes_payload(self, routes: Routes, key: object) -> bytes:
        """The ROUTES record for ``key``, pickled once per change of the routes."""
        cached = self._routes_cache
        if cached is None or cached[0] != key:
            want = self._host.accounting.wants_results
            cached = (key, ROUTES_HEAD.pack(want) + _pickle_routes(routes))
            self._routes_cache = cached
        return cached[1]

    def _write_job(self, handle: WorkerHandle, job: Job) -> None:
        assert job.routes is not None
        self._ship_routes(handle, *job.routes)  # the routes the job was planned with
        if job.kind == EVENTS:
            head = JOB_HEAD.pack(job.id, len(job.entries))
        else:
            head = BATCH_HEAD.pack(job.id, len(job.entries), *job.batch)
        handle.outstanding[job.id] = job
        handle.queued += job.events
        handle.jobs.put(job.kind, head + pack_entries(job.entries), self._waiter(handle))

    def _waiter(self, handle: WorkerHandle) -> Any:
        def wait() -> None:
            if not handle.process.is_alive():
                raise BusError(f"worker {handle.index} died while its job channel was full")
            self._ring_doorbell(handle)
            time.sleep(0.0002)
        return wait

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        if not ticket.done.wait(timeout):
            raise TimeoutError("events were not handled in time")

    def per_worker(self) -> tuple[int, ...]:
        if self._final_counts is not None:
            return self._final_counts
        return tuple(h.crashed_handled + h.jobs.control(HANDLED) for h in self._handles)

    # -- collecting ---------------------------------------------------------------
    def _collect(self) -> None:
        watched: tuple[int, ...] = ()
        poller = select.poll()
        while not self._released:
            fds = (self._notify_r.fileno(), self._stop_r,
                   *(h.process.sentinel for h in self._handles if h.process is not None))
            if fds != watched:  # a worker was replaced: watch its sentinel instead
                poller = select.poll()
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                watched = fds
            ready = {fd for fd, _ in poller.poll(1000)}
            try:
                with self._reading:
                    self._drain_pipe()
                    self._drain_all()
                    if self._stop_r in ready:
                        return  # shutdown() takes over the workers from here
                    for handle in self._handles:
                        # A dead worker's sentinel is ready; a wake-up by results alone costs no
                        # waitpid per worker (the poll timeout re-checks them all, to be safe).
                        process = handle.process
                        if process is not None and (process.sentinel in ready or not ready) and not process.is_alive():
                            self._on_death(handle)
            except Exception:  # a bug in here must not stop every later result from arriving
                log.exception("busmp collector: unexpected error; carrying on")

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        """Read results in the calling thread for up to ``seconds`` or until ``done()``.

        ``flush()`` calls this before it sleeps: a short round trip then costs one wake-up
        (this thread, by the worker's notify byte) instead of two (the collector thread,
        then this one). It steps aside at once when the collector is reading; the collector
        still watches for dying workers.
        """
        until = time.monotonic() + seconds
        while not done():
            remaining = until - time.monotonic()
            if remaining <= 0 or not self._reading.acquire(blocking=False):
                return
            try:
                if self._closing:
                    return
                if select.select([self._notify_r], [], [], remaining)[0]:
                    self._drain_pipe()
                self._drain_all()
            finally:
                self._reading.release()

    def _drain_pipe(self) -> None:
        try:
            while os.read(self._notify_r.fileno(), 65536):
                pass
        except BlockingIOError:
            pass

    def _drain_all(self) -> None:
        for handle in self._handles:
            self._drain(handle)
        self._place_backlog()

    def _drain(self, handle: WorkerHandle) -> None:
        results = handle.results
        while (record := results.get()) is not None:
            kind, payload = record
            if kind == DONE:
                job_id, processed, errors = DONE_REC.unpack(payload)
                self._host.accounting.count(processed, errors)
                job = self._jobs.get(job_id)
                if job is not None:
                    self._finish(job)
            elif kind == OUTCOME:
                job_id, pos, name_len, failed = OUTCOME_HEAD.unpack_from(payload)
                name = payload[OUTCOME_HEAD.size: OUTCOME_HEAD.size + name_len].decode()
                result, error = _load_outcome(payload[OUTCOME_HEAD.size + name_len:], name)
                if error is not None and not failed:  # a success that could not be rebuilt here
                    self._host.accounting.count(0, 1)
                job = self._jobs.get(job_id)
                if job is not None:
                    self._settle(job, pos, name, result, error, counted=True)
            elif kind == EMIT:
                (flags,) = EMIT_HEAD.unpack_from(payload)
                self._accept_emitted(bytes(payload[EMIT_HEAD.size:]), flags)

    def _settle(self, job: Job, pos: int, name: str, result: Any, error: BaseException | None,
                counted: bool) -> None:
        item = self._host.item_at(*job.locate(pos), job.ticket)
        accounting = self._host.accounting
        accounting.before(item, name)
        accounting.settle(item, name, result, error, counted=counted)

    def _finish(self, job: Job) -> None:
        with self._lock:
            if self._jobs.pop(job.id, None) is None:
                return
            handle = self._handles[job.worker]
            if handle.outstanding.pop(job.id, None) is not None:
                handle.queued -= job.events
            refs, done = self._refs, []
            for slot in job.slots:
                refs[slot] -= 1
                if refs[slot] == 0:
                    done.append(slot)
            if self._unassigned and not self._closing:
                self._feed(set())
        if len(done):
            self._host.release(done)
        if job.ticket is not None:
            job.ticket.jobs -= 1
            if job.ticket.jobs == 0:
                job.ticket.done.set()

    # -- follow-ups -----------------------------------------------------------------
    def _accept_emitted(self, payload: bytes, flags: int) -> None:
        try:
            event, _ctx, _attempts = decode_event(payload, flags)
        except Exception as exc:
            self._host.accounting.dead_letter(Event(UNDECODABLE, payload), exc, 1, DECODE_HANDLER)
            return
        self._host.count_followup()
        self._backlog.append((payload, flags, hash(event.projection), [], 1))

    def _place_backlog(self) -> None:
        """Move follow-ups into free slots and submit them; the rest wait for released slots."""
        if not self._backlog or self._closing:
            return
        placed = self._host.place_followups(list(self._backlog))
        for _ in placed:
            self._backlog.popleft()
        if placed:
            self.submit(placed)

    # -- crashes ------------------------------------------------------------------
    def _on_death(self, handle: WorkerHandle) -> None:
        """A worker is gone: charge what it held, and (unless closing) start a replacement.

        The channels are reset and the replacement started under the lock, *before* the dead
        jobs are finished: finishing them may let ``flush()`` return, and the next ``submit``
        must find a clean channel, not one that is about to be reset under it.
        """
        process = handle.process
        process.join()
        pid, exitcode = process.pid, process.exitcode
        self._drain(handle)
        controls = handle.jobs
        with self._lock:
            cur_job, cur_pos = controls.control(CUR_JOB), controls.control(CUR_POS)
            partial = (controls.control(CUR_PROCESSED), controls.control(CUR_ERRORS))
            started = controls.control(PID) != 0
            handle.crashed_handled += controls.control(HANDLED)
            dead_jobs = list(handle.outstanding.values())
            handle.jobs.reset()
            handle.results.reset()
            process.close()
            handle.process = None
            if not self._closing:
                self._replace(handle, pid, exitcode, started)
        error: BaseException = (StoreClosed("the store was drained before the event was handled")
                                if self._closing else WorkerCrashed(pid, exitcode))
        for job in dead_jobs:
            first = 0
            if job.id == cur_job:
                first = cur_pos
                self._host.accounting.count(*partial)
            self._charge(job, first, error)
        if self._broken is not None:
            self._fail_orphans()

    def _charge(self, job: Job, first: int, error: BaseException) -> None:
        """Events ``first`` onwards of ``job`` become dead letters with ``error``; the job ends."""
        for pos in range(first, job.events):
            self._settle(job, pos, CRASH_HANDLER, None, error, counted=False)
        self._finish(job)

    def _fail_orphans(self) -> None:
        """No replacement will start: once no worker is left, the jobs none holds are dead letters."""
        with self._lock:
            if any(h.process is not None for h in self._handles):
                return  # a live worker still takes them
            orphans = list(self._unassigned)
            self._unassigned.clear()
        for job in orphans:
            self._charge(job, 0, WorkerCrashed(*self._last_death))

    def _replace(self, handle: WorkerHandle, pid: int, exitcode: int | None, started: bool) -> None:
        log.warning("busmp worker %d (pid %s) died with exit code %s; starting a replacement",
                    handle.index, pid, exitcode)
        self._last_death = (pid, exitcode)
        self._early_deaths = 0 if started else self._early_deaths + 1
        if self._early_deaths >= EARLY_DEATHS_ALLOWED:
            self._broken = (f"busmp worker processes die before starting (last exit code "
                            f"{exitcode}); check that the main module can be imported "
                            "by a child process (guard it with `if __name__ == '__main__':`)")
            return
        self._start(handle)

    # -- shutting down ----------------------------------------------------------------
    def shutdown(self, timeout: float | None) -> None:
        """Stop every worker (STOP, then terminate stragglers); what they held becomes dead letters."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        os.write(self._stop_w, b"\x01")
        self._collector.join()  # from here on this thread alone reads results
        with self._reading:
            pass  # a flush() still reading has finished, and sees _closing from now on
        live = [h for h in self._handles if h.process is not None and h.process.is_alive()]
        for handle in live:
            try:
                handle.jobs.put(STOP, b"", self._waiter(handle))
            except BusError:
                pass
            self._ring_doorbell(handle)
        grace = time.monotonic() + (timeout if timeout is not None else 5.0)
        for handle in live:
            _stop_process(handle.process, grace)
        self._drain_all()
        for handle in self._handles:
            if handle.process is not None:
                self._on_death(handle)
        self._unassigned_to_dead_letters()
        self._backlog_to_dead_letters()
        self._final_counts = self.per_worker()
        self._release_resources()

    def abandon(self) -> None:
        """The store was garbage-collected undrained: stop everything, report nothing."""
        with self._lock:
            if self._released:
                return
            self._closing = True
        os.write(self._stop_w, b"\x01")
        if self._collector is not threading.current_thread():
            self._collector.join()
        for handle in self._handles:
            if handle.process is not None:
                _stop_process(handle.process, time.monotonic())
                handle.process.close()
                handle.process = None
        self._release_resources()

    def _unassigned_to_dead_letters(self) -> None:
        error = StoreClosed("the store was drained before the event was handed to a worker")
        while self._unassigned:
            job = self._unassigned.popleft()
            for pos in range(job.events):
                self._settle(job, pos, CRASH_HANDLER, None, error, counted=False)
            self._finish(job)

    def _backlog_to_dead_letters(self) -> None:
        while self._backlog:
            payload, flags, _, _, _ = self._backlog.popleft()
            event = decode_event(payload, flags)[0]
            self._host.accounting.dead_letter(event, StoreClosed("store drained before the follow-up ran"), 1,
                                              CRASH_HANDLER)
            self._host.finished(1)

    def _release_resources(self) -> None:
        self._released = True
        for handle in self._handles:
            handle.jobs.close()
            handle.results.close()
            handle.doorbell_r.close()
            handle.doorbell_w.close()
        self._notify_r.close()
        self._notify_w.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _stop_process(process: Any, deadline: float) -> None:
    """Join ``process`` until ``deadline``, then terminate it, then kill it."""
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
        process.terminate()
        process.join(1.0)
    if process.is_alive():
        process.kill()
        process.join()


def _load_outcome(body: bytes, handler: str) -> tuple[Any, BaseException | None]:
    """A worker's (result, error); what cannot be rebuilt here becomes a RemoteError."""
    try:
        result, error = pickle.loads(body)
    except Exception as exc:
        return None, RemoteError(type(exc).__name__, f"the outcome of handler {handler} could not be "
                                 f"unpickled in the parent: {exc}")
    return result, error


def _pickle_routes(routes: Routes) -> bytes:
    """The routes as workers receive them; a ``TypeError`` naming the callable that cannot
    be pickled (a handler that holds a lock, a file, a socket...) if they cannot travel."""
    try:
        payload: bytes = cloudpickle.dumps(routes, 5)
        return payload
    except Exception as exc:
        named: list[tuple[str, Any]] = [
            *((f"handler {handler_name(h)} of projection {p!r}", h) for p, hs in routes.handlers.items() for h in hs),
            *((f"batch handler {r.name} of projection {p!r}", r.handler)
              for p, rs in routes.batches.items() for r in rs),
            *((f"middleware {handler_name(m)}", m) for m in routes.middleware),
        ]
        for what, fn in named:
            try:
                cloudpickle.dumps(fn, 5)
            except Exception as culprit:
                raise TypeError(
                    f"{what} cannot be pickled for the worker processes ({type(culprit).__name__}: "
                    f"{culprit}); workers need a module-level function or a callable whose state "
                    "pickles (no locks, open files, sockets or mmaps), or use workers=0") from culprit
        raise TypeError(f"the handlers cannot be pickled for the worker processes: {exc}") from exc
