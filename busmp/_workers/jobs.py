"""Jobs: how the slots of one publish are cut into work for the workers.

A job names entries ``(slot, seq, start, stop)``: events start..stop-1 of a slot (a slot holds
one event or a chunk). EVENTS jobs run the per-event handlers; BATCH jobs hold exactly one
batch call's events. Both split a chunk's slot where a job boundary falls: the cost of an
event is unknown here, and a chunk of slow events must still spread over every worker. A
group that must keep its order (a transaction, a scheduled event) becomes one job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from .._dispatch import Routes, handler_name
from .._pipeline import Submission, Ticket
from .._transport.codec import UNDECODABLE
from .._transport.records import BATCH, EVENTS, Entry, split_deadline_word
from .._transport.slots import Slots

if TYPE_CHECKING:
    from .collector import Book
    from .executor import Host

__all__ = ["Job", "Planner", "plan_referenced", "MAX_JOB", "JOBS_PER_WORKER", "SMALL_PUBLISH", "call_names",
           "charge_calls", "split_unstarted", "timeout_error", "end_job", "record_outcome"]

MAX_JOB = 4096             # events per job: small enough to balance, big enough to amortise
JOBS_PER_WORKER = 16      # a publish is cut into at least this many jobs per worker (balance)
SMALL_PUBLISH = 16        # up to this many events, a publish is planned in plain Python


@dataclass(eq=False)
class Job:
    """Work for one worker: entries ``(slot, seq, start, stop)``, i.e. events start..stop-1
    of each slot. Positions (``pos``) number the job's events 0..events-1 in order.

    Entries are plain tuples: a job names a few slots, and a one-event publish (the latency
    path) should not pay numpy's fixed cost per operation."""

    id: int
    worker: int
    kind: int
    entries: list[Entry]
    ticket: Ticket | None = None
    batch: tuple[int, int] = (0, 0)  # (projection index, route index) for BATCH jobs
    events: int = 0
    _ends: list[int] | None = None  # cumulative events per entry, when entries hold several
    routes: tuple[Routes, object] | None = None  # the routing snapshot (and its key) planned with
    # The last outcome the parent read for this job, as (pos, call), and how many it read for
    # that pos: a worker reports in order, so every call before it is done (see pool.on_death).
    reported: tuple[int, int] = (-1, -1)
    reported_at: int = 0
    # Events whose handlers await on the worker's loop (ASYNC records): pos -> the first call
    # not yet reported; and whether the worker parked the job (PARKED), its sync pass over.
    awaiting: dict[int, int] | None = None
    parked: bool = False

    def __post_init__(self) -> None:
        ends = list(accumulate(stop - start for _, _, start, stop in self.entries))
        self.events = ends[-1] if ends else 0
        if self.events != len(self.entries):
            self._ends = ends

    @property
    def slots(self) -> list[int]:
        return [entry[0] for entry in self.entries]

    def entries_from(self, pos: int) -> list[Entry]:
        """The entries of events ``pos`` onwards."""
        out: list[Entry] = []
        seen = 0
        for slot, seq, start, stop in self.entries:
            if seen + stop - start > pos:
                out.append((slot, seq, start + max(0, pos - seen), stop))
            seen += stop - start
        return out

    def truncate(self, count: int) -> None:
        """Keep events 0..count-1 only (the rest went to another job)."""
        kept: list[Entry] = []
        seen = 0
        for slot, seq, start, stop in self.entries:
            if seen >= count:
                break
            kept.append((slot, seq, start, min(stop, start + count - seen)))
            seen += stop - start
        self.entries, self._ends = kept, None
        self.__post_init__()

    def locate(self, pos: int) -> tuple[int, int, int]:
        """The slot, its sequence number and the index within it of event ``pos``."""
        if self._ends is None:
            slot, seq, start, _ = self.entries[pos]
            return slot, seq, start
        row = bisect_right(self._ends, pos)
        slot, seq, start, stop = self.entries[row]
        return slot, seq, stop - (self._ends[row] - pos)


class Planner:
    """Turns the slots of one publish into jobs, spread over the workers."""

    def __init__(self, slots: Slots, workers: int) -> None:
        self._slots = slots
        self.workers = workers
        self._next_job = 0

    def plan(self, listed: list[int], routes: Routes, ticket: Ticket | None, queued: Sequence[int]) -> list[Job]:
        """Cut slots into EVENTS jobs (per-event handlers) and BATCH jobs (batch handlers).

        Every job names the least busy worker (``queued``: events each still holds). Only a
        group's jobs (``ticket``) stay there; the pool feeds the others to whichever worker
        is free, so a publish is cut into several jobs per worker."""
        worker = min(range(self.workers), key=queued.__getitem__)
        table, ring = self._slots, self._slots.ring
        if len(listed) <= SMALL_PUBLISH and not routes.batches \
                and sum(table.live[s] for s in listed) <= SMALL_PUBLISH:
            return self._plan_small(listed, routes, ticket, worker)
        slots = np.array(listed, dtype=np.int64)
        pick = itemgetter(*listed)
        starts = np.array(pick(table.first), dtype=np.int64).reshape(-1)  # one slot: a scalar
        sizes = np.array(pick(table.live), dtype=np.int64).reshape(-1)
        entries = np.stack([slots, ring.seqs(slots), starts, starts + sizes], axis=1)
        hashes = ring.routes(slots)
        jobs: list[Job] = []
        handled = _matches_any(hashes, _handler_hashes(routes))
        for group in _cut_exact(entries[handled], self._job_size(int(sizes[handled].sum()), ticket)):
            jobs.append(Job(self.new_job_id(), worker, EVENTS, group, ticket))
        for key, (projection, batch_routes) in enumerate(routes.batches.items()):
            mine = entries[hashes == hash(projection)]
            for r, route in enumerate(batch_routes):
                for group in _cut_exact(mine, route.size):
                    jobs.append(Job(self.new_job_id(), worker, BATCH, group, ticket, (key, r)))
        return jobs

    def _plan_small(self, slots: list[int], routes: Routes, ticket: Ticket | None, worker: int) -> list[Job]:
        """A publish of a few events, planned without numpy: what an idle bus waits for."""
        table, wanted = self._slots, routes.handler_hashes()
        rows: list[Entry] = []
        for slot in slots:
            seq, route = table.ring.seq_and_route(slot)
            if route in wanted:
                rows.append((slot, seq, table.first[slot], table.first[slot] + table.live[slot]))
        events = sum(stop - start for _, _, start, stop in rows)  # a slot may hold a run of several
        parts = 1 if ticket is not None else min(self.workers, events)  # a group stays in order
        if not parts:
            return []
        return [Job(self.new_job_id(), worker, EVENTS, group, ticket) for group in _cut(rows, -(-events // parts))]

    def _job_size(self, events: int, ticket: Ticket | None) -> int:
        if ticket is not None:
            return max(events, 1)  # one job: the group's order holds
        return max(1, min(MAX_JOB, -(-events // (self.workers * JOBS_PER_WORKER))))

    def new_job_id(self) -> int:
        self._next_job += 1
        return self._next_job


def plan_referenced(planner: Planner, refs: list[int], listed: list[int], routes: Routes, ticket: Ticket | None,
                    queued: Sequence[int]) -> tuple[list[Job], list[int]]:
    """Plan ``listed`` into jobs and count each slot a job names in ``refs`` (an executor's
    references, under its lock); the jobs, and the slots no job names (no handler wants their
    events). A group's (``ticket``) job count grows by the jobs planned."""
    jobs = planner.plan(listed, routes, ticket, queued)
    if ticket is not None:
        ticket.jobs += len(jobs)
    covered = 0
    for job in jobs:
        for slot in job.slots:  # a job names each slot once
            refs[slot] += 1
        covered += len(job.entries)
    idle = [s for s in listed if refs[s] == 0] if covered < len(listed) or routes.batches else []
    return jobs, idle


def end_job(job: Job, refs: list[int]) -> tuple[list[int], bool]:
    """``job`` is over: drop the slot references it held (an executor's, under its lock).
    The slots no job names any more, and whether it was its group's (ticket's) last job."""
    done = []
    for slot in job.slots:
        refs[slot] -= 1
        if refs[slot] == 0:
            done.append(slot)
    if job.ticket is None:
        return done, False
    job.ticket.jobs -= 1
    return done, job.ticket.jobs == 0


def record_outcome(submission: Submission | None, job: Job, result: Any, error: BaseException | None,
                   cut: bool = False) -> None:
    """One outcome of a submitted event into its future's record (``cut``: the event dies with
    ``error``, its later calls never run); nothing for an event that was not submitted."""
    if submission is None:
        return
    if cut and error is not None:
        submission.cut_off(error)
    else:
        submission.record(result, error, job.batch[1] if job.kind == BATCH else -1)


def _cut_exact(entries: np.ndarray, size: int) -> list[list[Entry]]:
    """Groups of exactly ``size`` events (the last may be short), splitting entries as needed.

    Whole entries are taken in one step, so the loop runs per slot, not per event; slots of
    one event each (one-at-a-time subscribes) are cut by slicing, with no loop at all."""
    if len(entries) and bool((entries[:, 3] - entries[:, 2] == 1).all()):
        rows: list[Entry] = list(map(tuple, entries.tolist()))
        return [rows[i: i + size] for i in range(0, len(rows), size)]
    return _cut(entries.tolist(), size)


def _cut(rows: Iterable[Sequence[int]], size: int) -> list[list[Entry]]:
    groups: list[list[Entry]] = []
    current: list[Entry] = []
    room = size
    for slot, seq, start, stop in rows:
        while start < stop:
            take = min(room, stop - start)
            current.append((slot, seq, start, start + take))
            start += take
            room -= take
            if room == 0:
                groups.append(current)
                current, room = [], size
    if current:
        groups.append(current)
    return groups


def _matches_any(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``np.isin`` without its fixed cost for the usual case of a few projections."""
    if len(wanted) <= 16:
        matched: np.ndarray = (values[:, None] == wanted[None, :]).any(axis=1)
        return matched
    return np.isin(values, wanted)


def _handler_hashes(routes: Routes) -> np.ndarray:
    if routes.hash_array is None:
        routes.hash_array = np.array(sorted(routes.handler_hashes()), dtype=np.int64)
    hashes: np.ndarray = routes.hash_array
    return hashes


#: The handler name of a dead letter that no handler's call can name (an event no one can read).
CRASH_HANDLER = "busmp.worker"


def call_names(job: Job, pos: int, host: Host) -> list[str]:
    """The calls a worker (or a Ray actor) makes for event ``pos`` of ``job``, by handler name,
    in order: what a crash or a timeout charges, one dead letter per call."""
    assert job.routes is not None
    routes = job.routes[0]
    if job.kind == BATCH:
        key, index = job.batch
        return [list(routes.batches.values())[key][index].name]
    event = host.item_at(*job.locate(pos), job.ticket).event
    names = [handler_name(h) for h in routes.handlers.get(event.projection, ())]
    if not names and event.projection == UNDECODABLE:
        names = [CRASH_HANDLER]  # the parent cannot read it either: one letter for the event
    return names


def charge_calls(book: Book, job: Job, first: tuple[int, int], error: BaseException,
                 timed_out: Callable[[str], BaseException] | None = None, last: int | None = None) -> None:
    """Every (event, handler) call of ``job`` from ``first`` = (pos, call) on, through event
    ``last`` (default: all), becomes a dead letter with ``error``, named after its handler;
    so does every call of an awaiting event (ASYNC) from its first one not reported. The job
    ends. ``timed_out`` makes the error of the call that was running at ``first`` (of a
    batch job: its one call, so every event charged). For the process pool and the Ray
    executor alike."""
    start, skip = first
    awaiting = job.awaiting or {}
    for pos, call in sorted(awaiting.items()):
        for name in call_names(job, pos, book.host)[call:]:
            book.settle(job, pos, name, None, error, counted=False, cut=True)
    end = job.events if last is None else min(job.events, last + 1)
    for pos in range(start, end):
        if pos in awaiting:
            continue
        for name in call_names(job, pos, book.host)[skip if pos == start else 0:]:
            failure = error
            if timed_out is not None:
                failure = timed_out(name)
                if job.kind != BATCH:
                    timed_out = None  # the calls after it in the fan-out never started
            book.settle(job, pos, name, None, failure, counted=False, cut=True)
    book.finish(job)


def split_unstarted(job: Job, pos: int, new_id: int, refs: list[int]) -> Job | None:
    """A worker (or actor) killed for a timeout while it ran event ``pos`` of ``job``: the
    events after it never started, and become a job of their own (None if there are none, or
    if ``job`` cannot be cut: a batch call, a parked job). ``job`` keeps events 0..pos (its end
    then counts only those); slot references follow the entries: a slot is referenced once per
    entry naming it, and the entry cut in two is now named by both jobs."""
    if job.parked or job.kind == BATCH or pos + 1 >= job.events:
        return None
    tail = Job(new_id, job.worker, job.kind, job.entries_from(pos + 1), job.ticket, job.batch)
    tail.routes = job.routes
    if tail.ticket is not None:
        tail.ticket.jobs += 1
    named = Counter(job.slots)
    job.truncate(pos + 1)
    for slot, more in (Counter(job.slots) + Counter(tail.slots) - named).items():
        refs[slot] += more
    return tail


def timeout_error(word: int, handler_timeout: float | None, killed: str) -> Callable[[str], BaseException]:
    """The error of a call past its deadline (CALL_DEADLINE ``word``), by handler name;
    ``killed`` names what was killed for it."""
    what = ("its context's deadline" if split_deadline_word(word)[1]
            else f"handler_timeout={handler_timeout:g} s")

    def error(name: str) -> BaseException:
        return TimeoutError(f"handler {name} ran past {what}; {killed} was killed and replaced")
    return error
