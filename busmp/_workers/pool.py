"""The process executor: local worker processes fed from shared memory.

Duties, one module each: ``processes`` (start, tell death, stop), ``feeder`` (publish → jobs →
job channels), ``collector`` (the thread that reads result channels), ``jobs`` (planning),
``worker`` (the loop in the worker process). :class:`ProcessExecutor` holds their shared state
and does the job bookkeeping that ties them together: which jobs name which slots, what a
dead worker held, what becomes of it.

Slots are reference-counted: an event may sit in one EVENTS job and in one BATCH job per batch
handler of its projection; its slot returns to the bus when the last of them is done.

A job whose handlers await (``async def``) is *parked* once the worker has run it up to its
awaiting calls (PARKED, see ``records``): it holds its slots until its DONE but is no longer
queued work, so the feeder gives that worker more. A crash charges a parked or awaiting job's
events only for the calls the worker did not report (``_charge``).

Lane jobs: the one-event-at-a-time path. A publish of a few events, none of a batch handler's
or an ``async def`` handler's projection, is written straight into the job channel of the least
loaded worker as a *lane job* (``LANE``), without planning, a ``Job`` object or a doorbell for
an awake worker (``processes.wake``). The worker counts lane jobs done in one word (LANE_DONE)
instead of a DONE record each; the parent keeps them in order in ``WorkerHandle.lane`` and
*harvests* them (``harvest``): it reads the word, then every record the worker sent before it
(the word is stored after them), and only then gives the slots back, so no outcome of a
lane job is read after its slot was reused. Harvests happen where the result channel is read
(the collector, a thread helping in ``flush()``), and in a publishing thread that finds the
channel empty. A lane job becomes a ``Job`` only when it must: for an OUTCOME (hooks, errors,
submitted events) and when its worker dies (``_adopt_lane``), and then the rules for jobs
hold. Whoever waits for work to finish (``attend``) sets WANT_PROGRESS, and the workers then
notify after each lane job; otherwise they notify once before they sleep.

Holding: a stream of one-event publishes to a lane worker that is still busy with the
earlier ones (it has lane jobs it has not finished) does not become one lane job each. Such a
publish only puts its slots on the *hold* (``_hold``: a check and an append), and the held
events go together, as one lane job, when the worker has caught up: at the next publish that
finds it so, or in the collector, which the worker notifies before it sleeps. The events were
published (they count in flight, no overrun policy touches them): holding only changes how
many travel in one job. It ends at once for a thread that waits for work to finish
(``attend``) and for ``shutdown``, and a hold that the worker has not caught up with within
``HOLD_SECONDS`` (a slow handler) is planned over every worker instead (``end_hold``).

Lock order: ``ProcessExecutor.lock`` (jobs, handles, the unassigned queue, slot references) →
``Bus.lock`` → accounting. ``Collector.reading`` is taken before any of them and only by a
thread that reads result channels. Hooks, which may take any user lock, run with none of the
pool's locks held, in one of: the collector thread; a thread in ``flush()`` reading for
itself; the thread in ``drain()`` (outcomes of the last moments, dead letters of the close);
a thread in ``publish()`` whose routes cannot be pickled (its events' dead letters).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import BusError, StoreClosed, WorkerCrashed
from .._lock import take
from .._pipeline import Ticket
from .._transport.codec import decode_event
from .._transport.packing import Encoded
from .._transport.records import (
    BATCH, CALL_DEADLINE, CUR_CALL, CUR_JOB, CUR_POS, EVENTS, FOLLOWUP_ROOM, HANDLED, LANE_DONE,
    LANE_MASK, PID, STOP, WANT_PROGRESS, WHOLE_EVENT, split_call_word, split_deadline_word, split_lane_word,
    split_progress_word,
)
from .._transport.stats import DEAD, STARTING
from . import processes
from .collector import Collector
from .executor import Host, place_backlog
from .feeder import Feeder
from .jobs import (
    CRASH_HANDLER, Job, Planner, charge_calls, end_job, plan_referenced, record_outcome, split_unstarted,
    timeout_error,
)
from .processes import LaneJob, WorkerHandle, wake
from .worker import worker_main

__all__ = ["ProcessExecutor", "DEFAULT_START_METHOD"]

log = logging.getLogger("busmp")

#: forkserver: the store's parent has threads (collector, timers), and forking a threaded
#: process can deadlock the child; forkserver forks from a clean single-threaded server that
#: has busmp and numpy preloaded, so workers start nearly as fast as with fork.
DEFAULT_START_METHOD = "forkserver" if sys.platform.startswith("linux") else "spawn"
READY_SECONDS = 60.0      # how long a new store waits for its workers to start
EARLY_DEATHS_ALLOWED = 3  # workers that fail to start, in a row, before we give up
QUICK_DEATH_SECONDS = 1.0  # a second worker in a row that dies sooner than this is replaced...
BACKOFF_SECONDS = (0.02, 1.0)  # ...after a back-off that doubles from the first value up to the second
LANE_EVENTS = 1    # a publish of this many events may go by lane (more are spread by the planner)
LANE_DEPTH = 32    # lane jobs and jobs a worker may hold before publishes are planned instead
LANE_SPILL = 4     # a stream stays with the first worker until it holds this many jobs
HARVEST_AFTER = 16  # a publishing thread harvests a worker's lane once it holds this many jobs
HOLD_EVENTS = 256   # published events the hold takes before it must be handed over
HOLD_SECONDS = 0.001  # how long the hold waits for its lane worker to catch up (see end_hold)


class ProcessExecutor:
    def __init__(self, host: Host, workers: int, start_method: str | None, prefix: str,
                 handler_timeout: float | None = None) -> None:
        self.workers = workers
        self.handler_timeout = handler_timeout
        self.host = host
        self._ring_name = host.slots.name
        self.mp: Any = mp.get_context(start_method or DEFAULT_START_METHOD)
        if self.mp.get_start_method() == "forkserver":
            # numpy too: busmp's workers do not import it, but the main module a worker
            # re-imports often does, and the server then pays for it once, not every worker.
            self.mp.set_forkserver_preload(["busmp._workers.worker", "numpy"])
        self.lock = threading.RLock()
        self.refs = [0] * host.slots.slot_count  # jobs that name each slot
        # Events of a slot that are handled while other jobs still name the slot (a chunk cut
        # into several jobs): no longer in flight for Stats, though the slot is still held.
        self.handled_early = [0] * host.slots.slot_count
        self.planner = Planner(host.slots, workers)
        self.jobs: dict[int, Job] = {}
        self.backlog: deque[Encoded] = deque()  # follow-ups waiting for a free slot
        self.unassigned: deque[Job] = deque()   # planned jobs no worker holds yet (see feeder)
        self.lane_jobs: dict[int, tuple[int, LaneJob]] = {}  # lane jobs not yet harvested: worker, job
        self._attending = 0  # threads waiting for work to finish (see attend)
        self._held: list[int] = []  # slots published while the lane worker was busy (see _hold)
        self._held_events = 0
        self._held_since = 0.0
        self._lane_worker: WorkerHandle | None = None  # the last lane job's worker
        self._attend_lock = threading.Lock()
        self.closing = False
        self._broken: str | None = None
        self._early_deaths = 0
        self._last_death: tuple[int, int | None] = (0, None)
        self._final_counts: tuple[int, ...] | None = None  # per_worker() once the channels are gone
        self._released = False
        self.feeder = Feeder(self)
        self.collector = Collector(self, f"busmp-collector-{prefix}")
        self.handles: list[WorkerHandle] = []
        try:
            for i in range(workers):
                self.handles.append(processes.new_handle(self.mp, i, prefix, host.slots.slot_count))
                self._start(self.handles[i])
            self._wait_ready(time.monotonic() + READY_SECONDS)
        except BaseException:
            for handle in self.handles:
                handle.doorbell_w.close()  # a worker that did start sees its parent leave, and exits
            self._stop_all(time.monotonic() + 2.0)
            for handle in self.handles:
                if handle.process is not None:
                    processes.reap(handle)
            self._release_resources()
            raise
        self.collector.start()

    def _wait_ready(self, deadline: float) -> None:
        """Return once every worker has attached to the bus (it writes its pid into its job
        channel's control words); raise ``BusError`` naming the fix if one dies first.

        A worker that cannot start (typically: under forkserver or spawn it re-imports a main
        module that starts a store at import time) fails the store's creation here, with one
        clear error, instead of turning every later event into a dead letter.
        """
        waiting = list(self.handles)
        while waiting:
            waiting = [h for h in waiting if h.jobs.control(PID) == 0]
            for handle in waiting:
                if processes.is_dead(handle):
                    pid, exitcode = processes.reap(handle)
                    raise BusError(_cannot_start(self.mp.get_start_method(), pid, exitcode))
            if waiting and time.monotonic() > deadline:
                raise BusError(f"busmp worker processes did not start within {READY_SECONDS:.0f} s; "
                               "the machine may be overloaded, or the main module slow to import")
            time.sleep(0.001)

    def _start(self, handle: WorkerHandle) -> None:
        # The position's statistics line is the parent's while no process fills it: STARTING
        # now; from its start on, the worker writes it (see _transport.stats).
        handle.followups_taken = 0  # its result channel is new or was reset
        handle.results.set_control(FOLLOWUP_ROOM, self.host.followup_room())
        handle.results.set_control(WANT_PROGRESS, int(self._attending > 0))
        block = self.host.stats_block
        block.set_worker(handle.index, 0, STARTING)
        processes.start(self.mp, handle, worker_main, (self._ring_name, self.collector.notify_w, os.getpid(),
                                                      block.block, handle.index, self.handler_timeout))
        log.info("busmp store %r: worker %d started (pid %d)", self.host.name, handle.index, handle.process.pid)

    # -- submitting ---------------------------------------------------------------
    def check_routes(self, routes: Any, key: object) -> None:
        """Before any event is taken: the routes must travel, and workers must be able to start."""
        if self._broken is not None:
            raise BusError(self._broken)
        self.feeder.routes_payload(routes, key)

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        if ticket is None and len(slots) <= LANE_EVENTS:
            if self._hold(slots):
                return
            if self._held:
                self.end_hold(force=True)  # the held events go first
            if self._by_lane(slots, LANE_EVENTS):
                return
        elif self._held:
            self.end_hold(force=True)
        self._plan(slots, ticket)

    def _plan(self, slots: Sequence[int], ticket: Ticket | None) -> None:
        """Plan ``slots`` into jobs and feed them to the workers (the path of every publish
        that does not go by lane)."""
        listed = list(slots)
        refused: TypeError | None = None
        take(self.lock)  # see _lock
        try:
            self.host.slots.sync_header()
            routes, key = self.host.routes_and_key()
            try:
                self.feeder.routes_payload(routes, key)
            except TypeError as exc:  # a handler registered since publish() checked the routes
                refused = exc
            jobs, idle = plan_referenced(self.planner, self.refs, listed, routes, ticket,
                                         [h.queued for h in self.handles])
            unhandled = self.host.slots.live_events(idle)
            for job in jobs:
                job.routes = (routes, key)
                self.jobs[job.id] = job
                if refused is not None:
                    continue
                if ticket is not None:  # a group stays on its one worker, in order
                    self.feeder.write_job(self.handles[job.worker], job)
                else:
                    self.unassigned.append(job)
            if refused is None:
                self.feeder.feed({job.worker for job in jobs} if ticket is not None else set())
            no_jobs = ticket is not None and ticket.jobs == 0
        finally:
            self.lock.release()
        if len(idle):
            if unhandled:
                self.host.accounting.count_unhandled(unhandled, "their projections (worker mode)")
            self.host.release(idle)  # no handler wants these events
        if refused is not None:
            for job in jobs:  # nothing vanishes: no worker can run these, so they are dead letters
                self._charge(job, (0, 0), refused)
            raise refused
        if no_jobs and ticket is not None:
            ticket.done.set()
        if self._broken is not None:
            # The events are taken: they become dead letters (nothing vanishes), and the next
            # publish() raises, before it takes any (check_routes).
            self._fail_orphans()

    # -- lane jobs (see the module docstring) ---------------------------------------------
    def _hold(self, slots: Sequence[int]) -> bool:
        """Put a one-event publish on the hold if its lane worker is still busy with earlier
        lane jobs; False (nothing done) if it must go now."""
        handle = self._lane_worker
        if handle is None or self._held_events >= HOLD_EVENTS or self._attending:
            return False
        table = self.host.slots
        routes = self.host.routes()
        if routes.batches:
            return False
        lanes, route_of, live = routes.lane_hashes(), table.route_of, table.live
        events = 0
        for slot in slots:
            if route_of[slot] not in lanes:
                return False
            events += live[slot]
        lock = self.lock
        take(lock)  # see _lock
        try:
            if handle.process is None or self.closing or self._broken is not None:
                return False
            if _unfinished(handle) <= 0:
                return False  # it has caught up
            if not self._held:
                self._held_since = time.monotonic()
            elif time.monotonic() - self._held_since >= HOLD_SECONDS:
                return False  # it is slow: the hold is planned over every worker (end_hold)
            self._held.extend(slots)
            self._held_events += events
            return True
        finally:
            lock.release()

    def end_hold(self, force: bool = False) -> None:
        """Hand the held events over if their lane worker has caught up (as one lane job),
        or they waited ``HOLD_SECONDS``, a thread waits for work to finish, or ``force`` (then
        planned over every worker, unless that one has caught up). The collector calls this
        each round, as do threads that read results for themselves."""
        if not self._held:
            return
        with self.lock:
            handle, caught_up = self._lane_worker, True
            if handle is not None and handle.process is not None and not self.closing:
                caught_up = _unfinished(handle) <= 0
            if not (caught_up or force or self._attending
                    or time.monotonic() - self._held_since >= HOLD_SECONDS):
                return
            held, self._held, self._held_events = self._held, [], 0
        if held:
            self._hand_over(held, caught_up)

    def hold_due(self) -> float | None:
        """Seconds until the hold is due to be planned (see ``end_hold``); None if empty."""
        if not self._held:
            return None
        return max(0.0, self._held_since + HOLD_SECONDS - time.monotonic())

    def _hand_over(self, slots: list[int], caught_up: bool) -> None:
        """The held events go: as one lane job to a worker that has caught up, else planned."""
        if not (caught_up and self._by_lane(slots, HOLD_EVENTS + LANE_EVENTS)):
            self._plan(slots, None)

    def _by_lane(self, slots: Sequence[int], limit: int) -> bool:
        """Hand a small publish (at most ``limit`` events) to the least loaded live worker as
        one lane job; False (nothing done) if it must be planned instead."""
        host = self.host
        table = host.slots
        routes, key = host.routes_and_key()
        if routes.batches or self._broken is not None:
            return False
        lanes, handled = routes.lane_hashes(), routes.handler_hashes()
        route_of, seq_of, first, live = table.route_of, table.seq_of, table.first, table.live
        entries: list[tuple[int, int, int, int]] = []
        idle: list[int] = []
        events = 0
        for slot in slots:
            route = route_of[slot]
            if route in lanes:
                start = first[slot]
                entries.append((slot, seq_of[slot], start, start + live[slot]))
                events += live[slot]
            elif route in handled:
                return False  # an async def handler's: planned, so that its awaits overlap
            else:
                idle.append(slot)
        if events > limit:
            return False
        try:
            self.feeder.routes_payload(routes, key)
        except TypeError:
            return False  # submit() turns the events into dead letters and raises
        lock = self.lock
        take(lock)  # see _lock: several producing threads must not convoy here
        try:
            handle = self._lane_for() if not self.closing else None
            if handle is None:
                return False
            if entries:
                job: LaneJob = (self.planner.new_job_id(), entries, events, (routes, key))
                handle.lane.append(job)  # first: if the write fails, the worker's death charges it
                self.lane_jobs[job[0]] = (handle.index, job)
                handle.queued += events
                self.feeder.write_lane_job(handle, job[0], entries, job[3])
                self._lane_worker = handle
        finally:
            lock.release()
        if entries:
            wake(handle)  # a syscall, so outside the lock: the GIL is released in it
        if idle:
            unhandled = table.live_events(idle)
            if unhandled:
                host.accounting.count_unhandled(unhandled, "their projections (worker mode)")
            host.release(idle)
        if len(handle.lane) >= HARVEST_AFTER:
            self._harvest_if_quiet(handle)
        return True

    def _lane_for(self) -> WorkerHandle | None:
        """The first live worker that keeps up (holds less than ``LANE_SPILL`` jobs), else
        the one holding the least work, if that is less than ``LANE_DEPTH`` jobs. Under the lock.

        A stream that one worker keeps up with stays with it: the others sleep instead of
        waking for every other event, which costs the machine's cores more than it gains."""
        best, least = None, LANE_DEPTH
        for handle in self.handles:
            if handle.process is None:
                continue
            load = _unfinished(handle) + len(handle.outstanding) - handle.parked
            if load < LANE_SPILL:
                return handle
            if load < least:
                best, least = handle, load
        return best

    def _harvest_if_quiet(self, handle: WorkerHandle) -> None:
        """Harvest ``handle``'s lane from a publishing thread, if no thread reads results now
        and its result channel holds nothing unread (else the reader harvests)."""
        reading = self.collector.reading
        if not reading.acquire(blocking=False):
            return
        try:
            word = handle.jobs.control(LANE_DONE)  # before looking at the channel (see harvest)
            if not handle.results.has_data() and not self.closing:
                self.harvest(handle, word)
        finally:
            reading.release()

    def harvest(self, handle: WorkerHandle, word: int) -> None:
        """Finish the lane jobs that LANE_DONE (read as ``word``, *before* the result channel
        was read to its end) counts done: their quiet calls counted, their slots given back.
        Only with ``Collector.reading`` held."""
        done, quiet = split_lane_word(word)
        slots: list[int] = []
        with self.lock:
            new = (done - handle.lane_done) & LANE_MASK
            if not new:
                return
            handle.lane_done += new
            counted, handle.lane_quiet = quiet - handle.lane_quiet, quiet
            lane, jobs, index = handle.lane, self.jobs, self.lane_jobs
            for _ in range(new):
                job_id, entries, events, _ = lane.popleft()
                del index[job_id]
                jobs.pop(job_id, None)  # made a Job for an outcome
                handle.queued -= events
                slots.extend([entry[0] for entry in entries])
        if counted:
            self.host.accounting.count(counted, 0)
        self.host.release(slots)

    def has_news(self, handle: WorkerHandle) -> bool:
        """Whether ``handle``'s worker sent records or finished lane jobs not yet taken in."""
        return handle.results.has_data() or (handle.jobs.control(LANE_DONE) - handle.lane_done) & LANE_MASK != 0

    def lane_job_for_outcome(self, job_id: int) -> None:
        """An OUTCOME names ``job_id``: if it is a lane job, make it a ``Job`` for ``settle``."""
        if job_id in self.jobs:
            return
        with self.lock:
            found = self.lane_jobs.get(job_id)
            if found is not None and job_id not in self.jobs:
                worker, (_, entries, _events, routes) = found
                self.jobs[job_id] = Job(job_id, worker, EVENTS, entries, routes=routes)

    def _adopt_lane(self, handle: WorkerHandle) -> None:
        """The lane jobs a dead worker held become jobs it holds, for the rules of crashes.
        Under the lock, once the worker's records and LANE_DONE are all read."""
        while handle.lane:
            job_id, entries, _events, routes = handle.lane.popleft()
            del self.lane_jobs[job_id]
            job = self.jobs.get(job_id)
            if job is None:
                job = self.jobs[job_id] = Job(job_id, handle.index, EVENTS, entries, routes=routes)
            for slot in job.slots:
                self.refs[slot] += 1
            handle.outstanding[job_id] = job

    def attend(self, change: int) -> None:
        """A thread starts (+1) or stops (-1) waiting for work to finish: while any waits,
        workers notify after each lane job (WANT_PROGRESS). Takes no lock but its own: called
        with the bus's lock held."""
        with self._attend_lock:
            before = self._attending
            self._attending += change
            if (before > 0) != (self._attending > 0):
                for handle in self.handles:
                    handle.results.set_control(WANT_PROGRESS, int(self._attending > 0))
        if change > 0 and self._held:
            self.collector.wake()  # the hold ends for a waiting thread (end_hold)

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        if not ticket.done.wait(timeout):
            raise TimeoutError("events were not handled in time")

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        self.attend(1)
        try:
            self.collector.read_for(done, seconds)
        finally:
            self.attend(-1)

    def per_worker(self) -> tuple[int, ...]:
        if self._final_counts is not None:
            return self._final_counts
        return tuple(h.crashed_handled + h.jobs.control(HANDLED) for h in self.handles)

    # -- job bookkeeping (called by the collector and on deaths) -----------------------
    def settle(self, job: Job, pos: int, name: str, result: Any, error: BaseException | None,
               counted: bool, cut: bool = False) -> None:
        """One outcome of event ``pos`` of ``job``: hooks, dead letter, counters, and the
        event's future if it was submitted (``cut``: the event dies with this error)."""
        accounting = self.host.accounting
        if error is None and not counted and not accounting.wants_results:
            # A success nobody watches (a submitted event's, without hooks): only its future
            # and the counter want it, so the event is not decoded again here.
            record_outcome(self.host.submission_at(job.locate(pos)[0]), job, result, None)
            accounting.count(1, 0)
            return
        item = self.host.item_at(*job.locate(pos), job.ticket)
        record_outcome(item.submission, job, result, error, cut)
        accounting.before(item, name)
        accounting.settle(item, name, result, error, counted=counted)

    def finish(self, job: Job) -> None:
        """``job`` is done: its slots' references drop, slots nobody names go back to the bus."""
        with self.lock:
            if self.jobs.pop(job.id, None) is None:
                return
            handle = self.handles[job.worker]
            if handle.outstanding.pop(job.id, None) is not None:
                handle.queued -= job.events
                if job.parked:
                    handle.parked -= 1
            done, ticket_done = end_job(job, self.refs)
            early = self._handled_early(job, done)
            if self.unassigned and not self.closing:
                self.feeder.feed(set())
        if early:
            self.host.handled_early(early)
        if len(done):
            self.host.release(done)
        if ticket_done and job.ticket is not None:
            job.ticket.done.set()

    def park(self, job: Job) -> None:
        """The worker ran ``job`` up to its awaiting calls (PARKED): it no longer counts as work
        queued there, so the worker is fed more while its handlers await."""
        with self.lock:
            if job.parked or job.id not in self.jobs:
                return
            job.parked = True
            handle = self.handles[job.worker]
            if job.id in handle.outstanding:
                handle.parked += 1
            if self.unassigned and not self.closing:
                self.feeder.feed(set())

    def _handled_early(self, job: Job, done: list[int]) -> int:
        """How the count of events handled in slots still held changes as ``job`` ends (under
        the lock). Only an EVENTS job planned without batch routes can tell: then it is the one
        job that names its events. Slots given back take their share out again."""
        early, handled = 0, self.handled_early
        routes = job.routes[0] if job.routes is not None else None
        if job.kind == EVENTS and routes is not None and not routes.batches:
            refs = self.refs
            for slot, _seq, start, stop in job.entries:
                if refs[slot]:
                    handled[slot] += stop - start
                    early += stop - start
        for slot in done:
            early -= handled[slot]
            handled[slot] = 0
        return early

    def _charge(self, job: Job, first: tuple[int, int], error: BaseException,
                timed_out: Callable[[str], BaseException] | None = None, last: int | None = None) -> None:
        charge_calls(self, job, first, error, timed_out, last)

    def place_backlog(self) -> None:
        """Move follow-ups into free slots and submit them; the rest wait for released slots."""
        if self.backlog and not self.closing:
            place_backlog(self.host, self.backlog, self.submit)

    # -- crashes ------------------------------------------------------------------
    def on_death(self, handle: WorkerHandle) -> None:
        """A worker is gone: charge what it held, and (unless closing) start a replacement.

        The channels are reset and the replacement started under the lock, *before* the dead
        jobs are finished: finishing them may let ``flush()`` return, and the next ``submit``
        must find a clean channel, not one that is about to be reset under it.
        """
        self.collector.read_channel(handle)
        pid, exitcode = processes.reap(handle)
        self.host.stats_block.set_worker(handle.index, pid, DEAD)
        if self.closing:
            log.info("busmp store %r: worker %d (pid %d) exited with code %s", self.host.name, handle.index,
                     pid, exitcode)
        controls = handle.jobs
        with self.lock:
            cur_job, (cur_pos, quiet) = controls.control(CUR_JOB), split_progress_word(controls.control(CUR_POS))
            call_pos, calls = split_call_word(controls.control(CUR_CALL))
            running = controls.control(CALL_DEADLINE)  # of the call it was in; 0: none ran
            started = controls.control(PID) != 0
            handle.crashed_handled += controls.control(HANDLED)
            self._adopt_lane(handle)
            dead_jobs = list(handle.outstanding.values())
            # Taken out of the position at once: from here on they are this thread's to charge
            # (or hand over), and nothing else (_fail_orphans in a producer) can take them too.
            handle.outstanding.clear()
            handle.queued = handle.parked = 0
            current = next((job for job in dead_jobs if job.id == cur_job), None)
            first, quiet_at = (0, 0), 0
            if current is not None:
                first, quiet_at = _frontier(current, cur_pos, calls if call_pos == cur_pos else 0)
            overdue, handle.overdue = handle.overdue, None
            timed_out: Callable[[str], BaseException] | None = None
            if overdue is not None and not self.closing:
                dead_jobs = self._hand_over_unstarted(handle, dead_jobs, current, first[0])
                if running == overdue:
                    timed_out = self._timeout_error(overdue, pid)
            processes.reset_channels(handle)
            if not self.closing:
                self._replace(handle, pid, exitcode, started)
        error: BaseException = (StoreClosed("the store was drained before the event was handled")
                                if self.closing else WorkerCrashed(pid, exitcode))
        for job in dead_jobs:
            if job.parked:  # its sync pass is over and counted (PARKED): only awaiting calls die
                self._charge(job, (job.events, 0), error)
            elif job is current:
                self.host.accounting.count(quiet + quiet_at, 0)
                last = first[0] if overdue is not None and job.kind != BATCH else None
                self._charge(job, first, error, timed_out, last)
            else:
                self._charge(job, (0, 0), error)
        if self._broken is not None:
            self._fail_orphans()
        if not self._released:
            self.write_followup_room()

    def write_followup_room(self) -> None:
        """Tell every worker how many follow-ups the store takes now (what ``ctx.emit`` checks
        there, see ``max_followups``): after each round of reading, since any channel's DONE
        may have given room back to all of them."""
        room = self.host.followup_room()
        for handle in self.handles:
            handle.results.set_control(FOLLOWUP_ROOM, room)

    # -- handler_timeout ------------------------------------------------------------------
    def check_deadlines(self) -> None:
        """Kill every worker whose current call is past its deadline (the collector calls this
        each time it wakes); ``on_death`` then settles the call with ``TimeoutError``."""
        if not self.handler_timeout:
            return
        now = time.monotonic_ns()
        for handle in self.handles:
            if handle.process is None or handle.overdue is not None:
                continue
            word = handle.jobs.control(CALL_DEADLINE)
            if word and split_deadline_word(word)[0] < now:
                handle.overdue = word
                log.warning("busmp store %r: worker %d (pid %s): a handler call ran past its deadline; "
                            "killing the worker", self.host.name, handle.index, handle.process.pid)
                processes.kill(handle)

    def _timeout_error(self, word: int, pid: int) -> Callable[[str], BaseException]:
        return timeout_error(word, self.handler_timeout, f"its worker process (pid {pid})")

    def _hand_over_unstarted(self, handle: WorkerHandle, dead_jobs: list[Job], current: Job | None,
                             pos: int) -> list[Job]:
        """A worker killed for a timeout: the events it had not started go back to the front of
        the queue for the other workers (they never ran, so this is no re-run). Returns the jobs
        left to charge: the current one, up to and including its event ``pos`` (the one that was
        running, or may have been). Under the lock."""
        # A parked job (its handlers awaiting) has started: it is charged, never handed over.
        unstarted = [job for job in dead_jobs if job is not current and not job.parked]
        tail = None if current is None else split_unstarted(current, pos, self.planner.new_job_id(), self.refs)
        if tail is not None:
            self.jobs[tail.id] = tail
            unstarted.insert(0, tail)
        self.unassigned.extendleft(reversed(unstarted))
        if unstarted:
            self.feeder.feed(set())
        return [job for job in dead_jobs if job is current or job.parked]

    def _fail_orphans(self) -> None:
        """No replacement will start: once no worker is left, the jobs none holds are dead letters
        (those waiting for any worker, and those written to the channel of a dead one)."""
        with self.lock:
            if any(h.process is not None or h.restart_at is not None for h in self.handles):
                return  # a live worker still takes them
            orphans = list(self.unassigned)
            self.unassigned.clear()
            for handle in self.handles:
                orphans.extend(handle.outstanding.values())
                handle.outstanding.clear()
                handle.queued = handle.parked = 0
        for job in orphans:
            self._charge(job, (0, 0), WorkerCrashed(*self._last_death))

    def _replace(self, handle: WorkerHandle, pid: int, exitcode: int | None, started: bool) -> None:
        """Start a replacement in ``handle``'s position, at once or after a back-off.

        Only a worker that exited by itself (an exit code >= 0) before it reported ready
        (``PID``) failed to start: the main module or the worker's code could not be loaded,
        and every replacement would fail the same way. A killed one (negative code: a signal,
        or an unknown code) is replaced however often it happens; when deaths come quickly,
        after a back-off, so that a killer of fresh workers does not make the pool spin.
        """
        self._last_death = (pid, exitcode)
        failed_to_start = not started and exitcode is not None and exitcode >= 0
        self._early_deaths = self._early_deaths + 1 if failed_to_start else 0
        if self._early_deaths >= EARLY_DEATHS_ALLOWED:
            self._broken = _cannot_start(self.mp.get_start_method(), pid, exitcode)
            log.error("busmp store %r: %s; no more replacements", self.host.name, self._broken)
            return
        quick = time.monotonic() - handle.started_at < QUICK_DEATH_SECONDS
        handle.quick_deaths = handle.quick_deaths + 1 if quick else 0
        delay = 0.0
        if handle.quick_deaths > 1:  # the first is replaced at once: one crash costs no wait
            first, most = BACKOFF_SECONDS
            delay = min(first * 2 ** (handle.quick_deaths - 2), most)
        log.warning("busmp store %r: worker %d (pid %s) died with exit code %s; starting a replacement%s",
                    self.host.name, handle.index, pid, exitcode, f" in {delay:.2f} s" if delay else "")
        handle.restart_at = time.monotonic() + delay
        handle.previous_pid = pid
        if not delay:
            self._start_due()

    def start_due(self) -> float | None:
        """Start the replacements whose back-off is over (the collector calls this each time it
        wakes); the seconds until the next one is due, None if none waits."""
        with self.lock:
            return self._start_due()

    def _start_due(self) -> float | None:
        if self.closing:
            return None
        now, next_due = time.monotonic(), None
        for handle in self.handles:
            due = handle.restart_at
            if due is None:
                continue
            if due > now:
                next_due = due - now if next_due is None else min(next_due, due - now)
                continue
            handle.restart_at = None
            try:
                self._start(handle)
            except Exception:  # no process could be made now (too many processes, no memory)
                log.exception("busmp store %r: could not start worker %d; trying again in 1 s",
                              self.host.name, handle.index)
                handle.restart_at = now + 1.0
                next_due = 1.0 if next_due is None else min(next_due, 1.0)
                continue
            log.info("busmp store %r: worker %d replaced: pid %s took over from pid %s", self.host.name,
                     handle.index, handle.process.pid, handle.previous_pid)
            if handle.outstanding:  # jobs of a group written to its channel while it was down
                processes.ring_doorbell(handle)
            self.feeder.feed(set())
        return next_due

    # -- shutting down ----------------------------------------------------------------
    def shutdown(self, timeout: float | None) -> None:
        """Stop every worker (STOP, then terminate stragglers); what they held becomes dead letters."""
        self.end_hold(force=True)  # held events were published: the workers run them before STOP
        with self.lock:
            if self.closing:
                return
            self.closing = True
        self.collector.stop()  # from here on this thread alone reads results
        live = [h for h in self.handles if h.process is not None and not processes.is_dead(h)]
        for handle in live:
            try:
                handle.jobs.put(STOP, b"", self.feeder._waiter(handle))
            except BusError:
                pass
            processes.ring_doorbell(handle)
        self._stop_all(time.monotonic() + (timeout if timeout is not None else 5.0))
        self.collector.read_results()
        for handle in self.handles:
            if handle.process is not None:
                self.on_death(handle)
        self._close_unassigned()
        self._close_backlog()
        self._final_counts = self.per_worker()
        self._release_resources()

    def detach(self) -> None:
        return None  # nothing outlives the store

    def abandon(self) -> None:
        """The store was garbage-collected undrained: stop everything, report nothing."""
        with self.lock:
            if self._released:
                return
            self.closing = True
        self.collector.stop()
        self._stop_all(time.monotonic())
        for handle in self.handles:
            if handle.process is not None:
                processes.reap(handle)
        self._release_resources()

    def _stop_all(self, deadline: float) -> None:
        for handle in self.handles:
            processes.stop(handle, deadline)

    def _close_unassigned(self) -> None:
        error = StoreClosed("the store was drained before the event was handed to a worker")
        while self.unassigned:
            self._charge(self.unassigned.popleft(), (0, 0), error)

    def _close_backlog(self) -> None:
        while self.backlog:
            payload, flags, _, _, _ = self.backlog.popleft()
            event = decode_event(payload, flags)[0]
            self.host.accounting.dead_letter(event, StoreClosed("store drained before the follow-up ran"), 1,
                                             CRASH_HANDLER)
            self.host.finished(1)
            self.host.followups_done(1)

    def _release_resources(self) -> None:
        self._released = True
        for handle in self.handles:
            processes.close_handle(handle)
        self.collector.close()


def _unfinished(handle: WorkerHandle) -> int:
    """Lane jobs ``handle``'s worker holds and has not finished (LANE_DONE counts the rest)."""
    return len(handle.lane) - ((handle.jobs.control(LANE_DONE) - handle.lane_done) & LANE_MASK)


def _cannot_start(method: str, pid: int, exitcode: int | None) -> str:
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    reimport = method in ("forkserver", "spawn")
    why = (f"a busmp worker process (pid {pid}) could not start: it exited with code {exitcode} "
           "before it attached to the store (its traceback is on stderr above).")
    if reimport and (path is None or not os.path.exists(path)):
        return (f"{why} Under start method {method!r} a worker re-imports the main module, and this "
                f"program's main module ({path or 'interactive or <stdin>'}) cannot be imported: save "
                "the program to a file, or pass start_method='fork'.")
    if reimport:
        return (f"{why} Under start method {method!r} a worker re-imports the main module "
                f"({path}); if that module creates the store at import time, guard it with "
                "`if __name__ == '__main__':`.")
    return why


def _frontier(job: Job, pos: int, calls: int) -> tuple[tuple[int, int], int]:
    """Where a dead worker stopped in ``job``: the first (pos, call) it did not finish, and how
    many calls before that, at that event, succeeded without an OUTCOME (uncounted so far).

    ``pos``/``calls`` are what its progress words say. An outcome read from its result channel
    is progress too, and may be ahead of them: the worker sends it before it moves the words,
    and may die in between. A worker runs and reports in order, so every call before the last
    one reported is done.
    """
    frontier = (pos, calls)
    last_pos, last_call = job.reported
    if last_pos >= 0:
        frontier = max(frontier, (last_pos + 1, 0) if last_call == WHOLE_EVENT else (last_pos, last_call + 1))
    reported_here = job.reported_at if last_pos == frontier[0] else 0
    return frontier, max(0, frontier[1] - reported_here)
