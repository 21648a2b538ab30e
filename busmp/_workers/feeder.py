"""Feeding the workers: a publish's slots become jobs, jobs go into job channels.

Runs in whichever parent thread submits (a producer's ``publish()``, a transaction, the
collector placing follow-ups), always under the pool's lock. Each worker holds at most
``FEED_DEPTH`` jobs; the rest wait in the pool's ``unassigned`` queue and are fed to whichever
worker finishes first, so a worker the machine slows down never holds work another could do.
"""

from __future__ import annotations

import copyreg
import io
import time
import types
from collections import ChainMap
from typing import TYPE_CHECKING, Any, ClassVar

import cloudpickle

from .._dispatch import Routes, handler_name
from .._errors import BusError
from .._transport.records import (
    BATCH_HEAD, EVENTS, JOB_HEAD, LANE, ONE_ENTRY_JOB, ORDERED, ROUTES, ROUTES_HEAD, Entry, pack_entries,
)
from .jobs import MAX_JOB, Job
from .processes import WorkerHandle, is_dead, ring_doorbell, wake

if TYPE_CHECKING:
    from .pool import ProcessExecutor

__all__ = ["Feeder", "FEED_DEPTH", "pickle_routes"]

#: Jobs a worker holds at once (one running, one queued); the rest wait in the pool. A parked
#: job (its handlers awaiting, see ``records``) does not count: a worker whose handlers await
#: takes more jobs meanwhile, up to its own bound on awaiting events (``worker``).
FEED_DEPTH = 2


class Feeder:
    def __init__(self, pool: ProcessExecutor) -> None:
        self._pool = pool
        self._routes_cache: tuple[object, bytes] | None = None
        self._waiters: dict[int, Any] = {}  # per worker position, made once

    def feed(self, woken: set[int]) -> None:
        """Give each live worker jobs until it holds ``FEED_DEPTH``, one at a time in turn,
        then ring the doorbells of the workers that got something. Under the pool's lock."""
        pool = self._pool
        live = [h for h in pool.handles if h.process is not None and len(h.outstanding) - h.parked < FEED_DEPTH]
        share = 0
        if len(pool.unassigned) > 1 and live:  # a worker takes work: its share of what waits
            waiting = sum(job.events for job in pool.unassigned)
            share = min(MAX_JOB, -(-waiting // len(live)))
        while pool.unassigned and live:
            live = [h for h in live if len(h.outstanding) - h.parked < FEED_DEPTH]
            for handle in live:
                if not pool.unassigned:
                    break
                job = pool.unassigned.popleft()
                if share > job.events:
                    job = self._merge(job, share)
                job.worker = handle.index
                self.write_job(handle, job)
                woken.add(handle.index)
        for i in woken:
            wake(pool.handles[i])

    def _merge(self, first: Job, limit: int) -> Job:
        """``first`` and the EVENTS jobs after it in the queue, up to ``limit`` events, as one.

        Events published one at a time become one-event jobs; while the workers are busy they
        wait here, and a worker that comes back for more takes its share of them as one job:
        one record, one doorbell and one DONE instead of one each per event. Only per-event
        handlers' jobs merge (a batch handler gets the events of one publish, never of two),
        only with the routes they were planned with, and never a group's (a ticket's) jobs."""
        pool = self._pool
        if first.kind != EVENTS or first.ticket is not None or first.routes is None:
            return first
        merged, events, key = [first], first.events, first.routes[1]
        while pool.unassigned:
            after = pool.unassigned[0]
            if (after.kind != EVENTS or after.ticket is not None or after.routes is None
                    or after.routes[1] != key or events + after.events > limit):
                break
            merged.append(pool.unassigned.popleft())
            events += after.events
        if len(merged) == 1:
            return first
        job = Job(pool.planner.new_job_id(), first.worker, EVENTS,
                  [entry for part in merged for entry in part.entries], routes=first.routes)
        for part in merged:  # the merged job names every slot its parts named, as often
            del pool.jobs[part.id]
        pool.jobs[job.id] = job
        return job

    def write_job(self, handle: WorkerHandle, job: Job) -> None:
        """Put ``job`` into the worker's job channel, after the routes it was planned with."""
        assert job.routes is not None
        self.write_routes(handle, *job.routes)
        if job.kind == EVENTS:
            head = JOB_HEAD.pack(job.id, len(job.entries))
        else:
            head = BATCH_HEAD.pack(job.id, len(job.entries), *job.batch)
        handle.outstanding[job.id] = job
        handle.queued += job.events
        kind = job.kind | (ORDERED if job.ticket is not None else 0)
        handle.jobs.put(kind, head + pack_entries(job.entries), self._waiter(handle))

    def write_lane_job(self, handle: WorkerHandle, job_id: int, entries: list[Entry], routes: tuple[Routes, object]
                       ) -> None:
        """Put a lane job (see ``pool``) into the worker's job channel, after its routes."""
        self.write_routes(handle, *routes)
        if len(entries) == 1:
            record = ONE_ENTRY_JOB.pack(job_id, 1, *entries[0])
        else:
            record = JOB_HEAD.pack(job_id, len(entries)) + pack_entries(entries)
        handle.jobs.put(EVENTS | LANE, record, self._waiter(handle))

    def write_routes(self, handle: WorkerHandle, routes: Routes, key: object) -> None:
        """A ROUTES record, if the worker's copy of the routes is not ``key``'s."""
        if handle.routes_key != key:
            handle.jobs.put(ROUTES, self.routes_payload(routes, key), self._waiter(handle))
            handle.routes_key = key

    def routes_payload(self, routes: Routes, key: object) -> bytes:
        """The ROUTES record for ``key``, pickled once per change of the routes; ``TypeError``
        naming the handler that cannot travel."""
        cached = self._routes_cache
        if cached is None or cached[0] != key:
            want = self._pool.host.accounting.wants_results
            cached = (key, ROUTES_HEAD.pack(want) + pickle_routes(routes))
            self._routes_cache = cached
        return cached[1]

    def _waiter(self, handle: WorkerHandle) -> Any:
        """What a full job channel waits with: wake the worker, give it a moment."""
        made = self._waiters.get(handle.index)
        if made is not None:
            return made

        def wait() -> None:
            if is_dead(handle):
                raise BusError(f"worker {handle.index} died while its job channel was full")
            ring_doorbell(handle)
            time.sleep(0.0002)
        self._waiters[handle.index] = wait
        return wait


def pickle_routes(routes: Routes) -> bytes:
    """The routes as workers receive them; a ``TypeError`` naming the callable that cannot
    be pickled (a handler that holds a lock, a file, a socket...) if they cannot travel."""
    try:
        buffer = io.BytesIO()
        _RoutesPickler(buffer, protocol=5).dump(routes)
        return buffer.getvalue()
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
                    "pickles (no locks, open files, sockets or mmaps), or use workers=0. A handler "
                    "cannot be unregistered: every publish() of this store fails until the store is "
                    "rebuilt on a Dispatcher without it") from culprit
        raise TypeError(f"the handlers cannot be pickled for the worker processes: {exc}") from exc


def _code_keeping_filename(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the real file name kept: cloudpickle
    writes ``<dynamic-code>`` (for reproducible pickles), and a worker's traceback would then
    name no file at all."""
    rebuild, args = cloudpickle.cloudpickle._code_reduce(code)
    return rebuild, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)


class _RoutesPickler(cloudpickle.Pickler):  # type: ignore[misc]
    dispatch_table: ClassVar[ChainMap[Any, Any]] = ChainMap(
        {types.CodeType: _code_keeping_filename}, cloudpickle.Pickler.dispatch_table, copyreg.dispatch_table)
