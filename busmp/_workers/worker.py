"""The worker process: read jobs from its channel, run handlers on slots, report results.

Loop: take the next job record; for EVENTS decode each named slot straight from the shared
ring and run its fan-out handlers; for BATCH run one batch call; write outcomes, emitted
events and a DONE record to the result channel. With no job queued, spin briefly (x86-64 only,
see ``_ring``), then sleep in ``select`` on the doorbell pipe. A watchdog thread ends the
process as soon as the parent is gone, even mid-handler: it sleeps on a pidfd of the parent
(Linux), or else checks every half second.

Lane jobs (``LANE``, see ``records``): a small publish the parent wrote while this worker was
awake. Finishing one is a store into LANE_DONE, no record and no system call; the parent learns
of it when it looks (each publish, its collector), and is notified only when it waits for
progress (WANT_PROGRESS), when the job sent records (outcomes, follow-ups), or once before
this worker sleeps. Sleeping is announced in SLEEP (odd), so that the parent rings the
doorbell only then. A record the parent wrote just as SLEEP turned odd may have been missed by
both sides (x86-64 lets a store pass a later load), so the first sleep is short
(``LOST_WAKEUP_SECONDS``) and the channel is looked at again before a sleep without end.

``async def`` handlers. A call that returns an awaitable hands the rest of its event (or its
batch call) to a continuation (see ``_pipeline``) that runs on this worker's event loop, made
on first need; the job goes on with its next event, so the handlers of different events,
and of different jobs, overlap while they await. The worker announces such an event (ASYNC)
before its progress words move past it, and the continuation reports every outcome, so a
crash is charged for exactly the calls not reported (see ``pool.on_death``). A job whose
events await is *parked* (PARKED) once its sync pass is over: the parent feeds further jobs
meanwhile, and the job's DONE follows when its last continuation ends. At most
``AWAITING_MAX`` continuations run at once; at the bound the worker reads no new job until
one ends. With none awaiting, the worker waits for jobs as before; with some, it runs the loop
(``run_loop``) until the doorbell rings, and gives the loop a turn after each job. A group
that keeps its order (ORDERED: a transaction) awaits each continuation at once instead.
"""

from __future__ import annotations

import functools
import os
import pickle
import select
import signal
import threading
import time
from collections.abc import Awaitable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._transport.channel import Channel
from .._transport.codec import (
    DECODE_HANDLER, FLAG_REPORT, FLAG_RUN, decode_events, decode_run, dumps, encode_event, portable_exception,
    run_items,
)
from .._dispatch import BatchRoute, Routes
from .._errors import BufferFull, RemoteError
from .._event import BACKGROUND, Context, Event, Result, current_emitter
from .._pipeline import NO_RESULT, BatchRest, ChainRest, Continuation, Item, returns_awaitable, run_chunk
from .._transport.records import (
    ASYNC, ASYNC_REC, BATCH, BATCH_HEAD, CALL_DEADLINE, CUR_CALL, CUR_JOB, CUR_POS, DONE,
    DONE_REC, FOLLOWUP, FOLLOWUP_HEAD, FOLLOWUP_ROOM, FOLLOWUPS_TAKEN, EVENTS, HANDLED, JOB_HEAD, LANE,
    LANE_DONE, ORDERED, OUTCOME, OUTCOME_HEAD, PARKED, PARKED_REC, PID, ROUTES, ROUTES_HEAD, SLEEP, STOP,
    WANT_PROGRESS, WHOLE_EVENT, Entry, call_word, deadline_word, lane_word, progress_word, unpack_entries,
)
from .._transport.ring import SPIN_ALLOWED, SlotRing
from .._transport.stats import BUSY, IDLE, W_HANDLED, W_JOBS, WorkerLine

if TYPE_CHECKING:
    import asyncio

__all__ = ["worker_main", "Worker", "AWAITING_MAX", "Controls"]

#: Continuations (events, or batch calls, whose handlers await) one worker runs at once. The
#: bound keeps memory and the loop's turn time in check; it is far above what a job holds, so
#: awaiting handlers are not held back by how many jobs the parent queues (``FEED_DEPTH``).
AWAITING_MAX = 1024
# What run_loop() waits for: a job (or every continuation ended), room under AWAITING_MAX,
# or every continuation ended.
_FOR_JOBS, _FOR_ROOM, _FOR_ALL = 0, 1, 2
SPIN_SECONDS = 50e-6
#: How long a worker spins instead after a job with a submitted event (``FLAG_REPORT``): a
#: caller that waits on results one at a time submits its next event as soon as it has the
#: result, and a worker caught spinning spares a wake-up on each side. The CPU is yielded
#: between looks, so that the caller gets it where both share a core.
SPIN_SUBMITTED_SECONDS = 500e-6
_yield = getattr(os, "sched_yield", lambda: None)
LOST_WAKEUP_SECONDS = 0.001
PARENT_CHECK_SECONDS = 0.5
_NOTHING = object()  # no projection seen yet
#: A slot's events, their context, earlier attempts, and whether a caller waits for their
#: every outcome (``FLAG_REPORT``: a submitted event).
Decoded = tuple[list[Event], Context, int, bool]
#: A slice of a job: events, their context and earlier attempts, the position of the first,
#: whether every outcome is wanted.
Slice = tuple[list[Event], Context, int, int, bool]

def worker_main(jobs_name: str, results_name: str, doorbell: Any, ring_name: str, notify: Any,
                owner_pid: int, stats_name: str | None = None, index: int = 0,
                handler_timeout: float | None = None) -> None:
    """Entry point of a worker process (the target of ``Process``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it drains us
    owner = Owner(owner_pid)
    _start_watchdog(owner)
    worker = Worker(SlotRing.attach(ring_name), Channel.attach(jobs_name), Channel.attach(results_name),
                    doorbell.fileno(), notify.fileno(), owner, handler_timeout)
    if stats_name is not None:  # after the pid is written: that is when the parent counts us started
        worker.attach_stats(WorkerLine(stats_name, index))
    try:
        worker.run()
    finally:
        worker.close()


class Worker:
    watches_before = False  # the parent fires on_before when an outcome arrives
    emitted = 0  # FOLLOWUP records sent; a class default for workers built without __init__ (Ray)
    submitted = False  # a job since the last wait held a submitted event (see wait_for_work)

    def __init__(self, ring: SlotRing, jobs: Channel, results: Channel, doorbell_fd: int,
                 notify_fd: int, owner: Owner, handler_timeout: float | None = None) -> None:
        self.ring, self.jobs, self.results = ring, jobs, results
        self.doorbell_fd, self.notify_fd = doorbell_fd, notify_fd
        os.set_blocking(doorbell_fd, False)
        os.set_blocking(notify_fd, False)
        self.owner = owner
        self.start_running(jobs)
        # With a handler_timeout, every call is wrapped to publish its deadline (see ``timed``).
        self.timeout_ns = int(handler_timeout * 1e9) if handler_timeout else 0

    def start_running(self, controls: Controls) -> None:
        """The state of running handlers, with the control words its progress goes to. The
        Ray actor (``busmp._ray.actor``) runs handlers with this class too: it calls this
        alone, and overrides :meth:`read_slot`, :meth:`put_result` and :meth:`notify_parent`."""
        self.controls = controls
        self.routes = Routes()
        self.timeout_ns = 0  # no handler_timeout (the process executor's workers may set one)
        self.timed_chains: dict[Hashable, tuple[tuple[Any, str], ...]] = {}
        self.last_decoded: tuple[tuple[int, int], Decoded | None] = ((-1, -1), None)
        self.want_outcomes = False
        self.emitted = 0  # FOLLOWUP records sent
        self.handled = 0
        # Per-job state, for the observer callbacks. ``quiet``: successes not reported one by
        # one (no hooks want them); the parent counts every reported outcome itself.
        self.job = 0
        self.entries: list[Entry] = []
        self.quiet = 0
        self.ordered = False  # the job keeps its order: await each awaitable at once
        # Continuations on the event loop (made on first need), per job the number still
        # running, and the parked jobs' event counts (their DONE waits for the last one).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.job_awaits: dict[int, int] = {}
        self.parked: dict[int, int] = {}
        self.wake: asyncio.Future[bool] | None = None
        self.waiting_for = _FOR_JOBS
        self.reporting: set[int] = set()  # positions of the batch job whose every outcome is wanted
        controls.set_control(PID, os.getpid())
        self.progress = controls.control_words()
        self.line: WorkerLine | None = None
        self.handled_before = 0
        self.jobs_done = 0
        # Lane jobs finished and their quiet calls (LANE_DONE), records sent, what the parent
        # was last notified of, and the sleeps so far (SLEEP).
        self.lane_done = 0
        self.lane_quiet = 0
        self.sent = 0
        self.notified = (0, 0)
        self.sleeps = 0
        self.busy = False  # what the statistics line says (BUSY from a job's start until a sleep)

    def attach_stats(self, line: WorkerLine) -> None:
        """Write this position's statistics line from now on: ours while we run. The handled
        count goes on from where the earlier processes of this position left it."""
        self.line = line
        self.handled_before = line.handled()
        line.started(os.getpid(), IDLE, time.time())

    def close(self) -> None:
        self.notify_parent()
        self.last_decoded = ((-1, -1), None)  # a run's items are views of the ring
        if self.loop is not None:
            for task in self.tasks:  # the parent is gone: nobody waits for these any more
                task.cancel()
            self.loop.close()
        if self.line is not None:
            self.line.close()
        self.ring.close()
        self.jobs.close()
        self.results.close()

    # -- main loop ----------------------------------------------------------------
    def run(self) -> None:
        while True:
            if len(self.tasks) >= AWAITING_MAX:
                self.run_loop(_FOR_ROOM)
                continue
            record = self.jobs.get()
            if record is None:  # the parent heard of our last job when it finished
                if not (self.run_loop(_FOR_JOBS) if self.tasks else self.wait_for_work()):
                    return
                continue
            kind, payload = record
            lane = bool(kind & LANE)
            self.ordered = bool(kind & (ORDERED | LANE))  # a lane job never parks (see records)
            kind &= ~(ORDERED | LANE)
            if kind == STOP:
                while self.tasks:
                    self.run_loop(_FOR_ALL)
                return
            if kind == ROUTES:
                (want,) = ROUTES_HEAD.unpack_from(payload)
                self.routes, self.want_outcomes = pickle.loads(payload[ROUTES_HEAD.size:]), bool(want)
                self.timed_chains = {}
            elif kind == EVENTS:
                job, _count = JOB_HEAD.unpack_from(payload)
                self.run_events(job, unpack_entries(payload, JOB_HEAD.size), lane)
            elif kind == BATCH:
                job, _count, key, route = BATCH_HEAD.unpack_from(payload)
                self.run_batch(job, unpack_entries(payload, BATCH_HEAD.size), key, route)
            if kind != ROUTES:
                if not lane:
                    self.notify_parent()  # a finished job: the parent frees its slots and feeds us more
                if self.tasks:
                    self.loop_once()  # awaiting handlers move on between jobs too

    # -- the event loop, for async def handlers -----------------------------------------
    def event_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            import asyncio  # on first need only: a worker of sync handlers never pays for it

            self.loop = asyncio.new_event_loop()
        return self.loop

    def run_loop(self, waiting_for: int) -> bool:
        """Run the event loop until what ``waiting_for`` names; False if the parent is gone.
        Waiting for jobs, the doorbell is watched by the loop itself (no thread, no timeout)."""
        loop = self.event_loop()
        self.wake = loop.create_future()
        self.waiting_for = waiting_for
        recheck: asyncio.TimerHandle | None = None
        if waiting_for == _FOR_JOBS:
            self.before_sleep()
            loop.add_reader(self.doorbell_fd, self.doorbell)
            if self.jobs.has_data():
                self.wake.set_result(True)
            else:
                recheck = loop.call_later(LOST_WAKEUP_SECONDS, self.look_again)
        try:
            return loop.run_until_complete(self.wake)
        finally:
            if waiting_for == _FOR_JOBS:
                loop.remove_reader(self.doorbell_fd)
                self.awake()
                if recheck is not None:
                    recheck.cancel()
            self.wake = None

    def look_again(self) -> None:
        """A record that came as SLEEP turned odd is seen here (see the module docstring)."""
        if self.jobs.has_data() and self.wake is not None and not self.wake.done():
            self.wake.set_result(True)

    def doorbell(self) -> None:
        try:
            data = os.read(self.doorbell_fd, 4096)
        except BlockingIOError:
            return
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(bool(data))  # b"": every writer closed, parent gone

    def loop_once(self) -> None:
        """One turn of the loop: what is ready runs, what is due fires, nothing is waited for."""
        loop = self.event_loop()
        loop.call_soon(loop.stop)
        loop.run_forever()

    def defer_chain(self, awaitable: Awaitable[Any], name: str, rest: Sequence[tuple[Any, str]], event: Event,
                    ctx: Context, pos: int, call: int) -> None:
        """Call ``call`` of event ``pos`` returned ``awaitable``: the rest of the event runs as
        a continuation (announced first), or at once in an ordered job."""
        reporter = _Reporter(self, self.job, call, True)
        continuation = ChainRest(awaitable, name, rest, Item(event, ctx, 0, None, pos), reporter, self.emit,
                                 BaseException)
        if self.ordered:
            self.event_loop().run_until_complete(continuation.run())
            return
        self.put_result(ASYNC, ASYNC_REC.pack(self.job, pos, call))
        self.start(continuation)

    def defer_batch(self, continuation: Continuation) -> None:
        """A batch call returned an awaitable: its events are announced, then it runs on the
        loop and reports every event's outcome (or at once, in an ordered job)."""
        if self.ordered:
            self.event_loop().run_until_complete(continuation.run())
            return
        assert isinstance(continuation, BatchRest)
        for item in continuation.chunk:
            self.put_result(ASYNC, ASYNC_REC.pack(self.job, item.token, 0))
        continuation.observer = _Reporter(self, self.job, 0, False)
        self.start(continuation)

    def start(self, continuation: Continuation) -> None:
        job = self.job
        task = self.event_loop().create_task(continuation.run())
        self.tasks.add(task)
        self.job_awaits[job] = self.job_awaits.get(job, 0) + 1
        task.add_done_callback(functools.partial(self.task_done, job))

    def task_done(self, job: int, task: asyncio.Task[None]) -> None:
        """A continuation ended: the last one of a parked job finishes that job."""
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # handler errors were reported; this only marks it retrieved
        left = self.job_awaits[job] - 1
        if left:
            self.job_awaits[job] = left
        else:
            del self.job_awaits[job]
            events = self.parked.pop(job, None)
            if events is not None:
                self.done(job, events, 0)
                self.notify_parent()
        wake = self.wake
        if wake is not None and not wake.done() and (
                not self.tasks or (self.waiting_for == _FOR_ROOM and len(self.tasks) < AWAITING_MAX)):
            wake.set_result(True)

    def wait_for_work(self) -> bool:
        """Spin briefly, then sleep on the doorbell; False once the parent is gone.

        After a job with a submitted event the spin is longer (``SPIN_SUBMITTED_SECONDS``);
        either yields the CPU between looks. Then SLEEP turns odd and the worker sleeps.
        The last sleep has no timeout: the watchdog thread ends the process if the parent dies.
        """
        jobs = self.jobs
        if SPIN_ALLOWED:
            # Between looks the core goes to whoever else can run (the producer, on a machine
            # with no core to spare); on an idle core sched_yield returns at once.
            submitted, self.submitted = self.submitted, False
            until = time.perf_counter() + (SPIN_SUBMITTED_SECONDS if submitted else SPIN_SECONDS)
            while time.perf_counter() < until:
                if jobs.has_data():
                    return True
                _yield()
        self.before_sleep()
        try:
            if jobs.has_data():
                return True
            if not select.select([self.doorbell_fd], [], [], LOST_WAKEUP_SECONDS)[0]:
                if jobs.has_data():
                    return True
                select.select([self.doorbell_fd], [], [])
            try:
                return bool(os.read(self.doorbell_fd, 4096))  # b"": every writer closed, parent gone
            except BlockingIOError:
                return True
        finally:
            self.awake()

    def before_sleep(self) -> None:
        """About to sleep on the doorbell: tell the parent of lane jobs it was not notified of,
        and make SLEEP odd (the parent rings only then)."""
        if self.line is not None and self.busy:
            self.line.set_state(IDLE, time.time())
            self.busy = False
        if self.notified != (self.sent, self.lane_done):
            self.notify_parent()
        self.sleeps += 1
        words, base = self.progress
        words[base + SLEEP] = 2 * self.sleeps - 1

    def awake(self) -> None:
        words, base = self.progress
        words[base + SLEEP] = 2 * self.sleeps

    def parent_alive(self) -> bool:
        return self.owner.alive()

    def notify_parent(self) -> None:
        self.notified = (self.sent, self.lane_done)
        try:
            os.write(self.notify_fd, b"\x01")
        except BlockingIOError:
            pass  # the pipe is full: the parent has wake-ups enough

    # -- jobs ---------------------------------------------------------------------
    def start_job(self, job: int, entries: list[Entry]) -> None:
        self.entries, self.quiet = entries, 0
        if self.reporting:
            self.reporting = set()
        words, base = self.progress
        words[base + CUR_POS] = 0  # no event done, no call counted
        words[base + CUR_CALL] = 0
        words[base + CUR_JOB] = job  # last: until now a crash charges the whole job
        self.job = job
        if self.line is not None and not self.busy:  # idle again only when it sleeps
            self.line.set_state(BUSY, time.time())
            self.busy = True

    def finish_job(self, lane: bool = False) -> None:
        events = sum(stop - start for _, _, start, stop in self.entries)
        if lane:
            self.finish_lane_job(events)
            return
        if self.job_awaits.get(self.job):  # some of its events await: parked until they end
            self.parked[self.job] = events
            self.put_result(PARKED, PARKED_REC.pack(self.job, self.quiet))
            return
        self.done(self.job, events, self.quiet)

    def done(self, job: int, events: int, quiet: int) -> None:
        self.count_handled(events)  # before DONE: flush() may return on DONE
        self.put_result(DONE, DONE_REC.pack(job, quiet, 0))

    def count_handled(self, events: int) -> None:
        self.handled += events
        self.controls.set_control(HANDLED, self.handled)
        line = self.line
        if line is not None:
            self.jobs_done += 1
            line.set(W_HANDLED, self.handled_before + self.handled)
            line.set(W_JOBS, self.jobs_done)

    def finish_lane_job(self, events: int) -> None:
        """A lane job is done: one store says so (its records, if any, went before it). The
        parent is notified at once only if it waits for progress or the job sent records."""
        self.count_handled(events)
        self.lane_done += 1
        self.lane_quiet += self.quiet
        words, base = self.progress
        words[base + LANE_DONE] = lane_word(self.lane_done, self.lane_quiet)
        if self.sent != self.notified[0] or self.results.control(WANT_PROGRESS):
            self.notify_parent()

    def run_events(self, job: int, entries: list[Entry], lane: bool = False) -> None:
        self.start_job(job, entries)
        reset = current_emitter.set(self.emit)
        try:
            for events, ctx, _attempts, pos, report in self.slices():
                self.run_handlers(events, ctx, pos, report)
        finally:
            current_emitter.reset(reset)
        self.finish_job(lane)

    def slices(self) -> Iterator[tuple[list[Event], Context, int, int, bool]]:
        """The job's events slot by slot, decoded straight from the ring: each slot's share of
        events, their context and earlier attempts, the job position of the first one, and
        whether every outcome is wanted. A slot that cannot be decoded is reported (see
        ``decode``) and skipped."""
        pos = 0
        for slot, seq, start, stop in self.entries:
            decoded = self.decode(slot, seq, pos, stop - start)
            if decoded is not None:
                events, ctx, attempts, report = decoded
                if type(events) is RawRun:
                    yield from self.run_slices(events[start:stop], pos, report)
                else:
                    yield events[start:stop], ctx, attempts, pos, report
            pos += stop - start

    def run_slices(self, items: list[Any], pos: int, report: bool) -> Iterator[Slice]:
        """The events of a run (``FLAG_RUN``), each decoded on its own, in order: one that
        cannot be is reported alone, after the events before it have run. The decoded ones
        go out together, unless a handler_timeout bounds each decode (a decode that hangs is
        then charged to its own event, not to the ones decoded before it)."""
        if not self.timeout_ns:
            try:
                events: list[Event] | None = decode_run(items)  # all at once, in C
            except BaseException:  # one of them cannot be decoded: which, below
                events = None
            if events is not None:
                yield events, BACKGROUND, 0, pos, report
                return
        words, index = self.progress[0], self.progress[1] + CALL_DEADLINE
        ready: list[Event] = []
        first = pos
        for offset, item in enumerate(items):
            if self.timeout_ns:
                words[index] = deadline_word(self.timeout_ns, None)
            try:
                event = decode_events(item, 0)[0][0]
            except BaseException as exc:  # as in decode: the worker lives on
                if ready:
                    yield ready, BACKGROUND, 0, first, report
                    ready = []
                self.report(pos + offset, DECODE_HANDLER, None, exc, WHOLE_EVENT)
                self.controls.set_control(CUR_POS, progress_word(pos + offset + 1, self.quiet))
                first = pos + offset + 1
                continue
            finally:
                if self.timeout_ns:
                    words[index] = 0
            ready.append(event)
            if self.timeout_ns:
                yield ready, BACKGROUND, 0, first, report
                ready, first = [], pos + offset + 1
        if ready:
            yield ready, BACKGROUND, 0, first, report

    def run_handlers(self, events: list[Event], ctx: Context, pos: int, wanted: bool = False) -> None:
        """Every fan-out handler of each event, then the progress words for that event.

        The hot loop of a worker: no object per event besides the event itself, the chain
        looked up once per run of one projection, outcomes sent only for failures (or when
        the parent has hooks that want every outcome, or ``wanted``: a submitted event).

        Progress, so that a crash is charged for exactly the (event, handler) calls that did
        not finish: CUR_CALL after each call of an event with several handlers (the calls
        done so far), CUR_POS (with the quiet calls) after each event. A reported outcome is
        progress too: the parent never charges a call it has an outcome for.
        """
        chains, want, report = self.routes.chains, self.want_outcomes or wanted, self.report
        if self.timeout_ns:
            chains = self.timed_chain
        words, base = self.progress
        at = base + CUR_POS
        quiet = self.quiet
        projection: object = _NOTHING
        chain: tuple[tuple[Any, str], ...] = ()
        several = False
        only: Any = None  # the one handler of a projection that has one, and its name
        name = ""
        for event in events:
            if event.projection is not projection:
                projection = event.projection
                chain = chains(projection)
                several = len(chain) > 1
                only, name = chain[0] if len(chain) == 1 else (None, "")
            if only is not None:
                # The usual case, a projection with one handler, without the loop over a chain
                # (an iterator and an unpacking per event): the same steps as the loop below.
                try:
                    result = only(ctx, event)
                except BaseException as exc:  # the worker must outlive its handlers
                    report(pos, name, None, exc, 0)
                else:
                    if result is not None and type(result) is not Result and isinstance(result, Awaitable):
                        self.defer_chain(result, name, (), event, ctx, pos, 0)
                    elif want:
                        report(pos, name, NO_RESULT if result is None else result, None, 0)
                    else:
                        quiet += 1
                pos += 1
                words[at] = (quiet << 32) | pos  # progress_word: from here a crash spares this event
                continue
            for call, (fn, name) in enumerate(chain):
                try:
                    result = fn(ctx, event)
                except BaseException as exc:  # the worker must outlive its handlers
                    report(pos, name, None, exc, call)
                else:
                    if result is not None and type(result) is not Result and isinstance(result, Awaitable):
                        self.defer_chain(result, name, chain[call + 1:], event, ctx, pos, call)
                        break  # the continuation runs (and reports) the rest of this event
                    if want:
                        report(pos, name, NO_RESULT if result is None else result, None, call)
                    else:
                        quiet += 1
                if several:
                    words[base + CUR_CALL] = call_word(pos, call + 1)  # the calls done so far
            pos += 1
            words[at] = (quiet << 32) | pos
        self.quiet = quiet

    def decode(self, slot: int, seq: int, pos: int, count: int) -> Decoded | None:
        """A slot's events straight from the ring; None (and ``count`` failures reported,
        charged to these events alone) if they cannot be decoded. The last slot decoded is
        kept: consecutive jobs share a chunk's slot where the planner split it."""
        if self.last_decoded[0] == (slot, seq):
            return self.last_decoded[1]
        words, index = self.progress[0], self.progress[1] + CALL_DEADLINE
        if self.timeout_ns:  # unpickling runs the payload's own code, which may never return
            words[index] = deadline_word(self.timeout_ns, None)
        try:
            payload, flags, buffers = self.read_slot(slot, seq)
            events: list[Any]
            if flags & FLAG_RUN:  # decoded one by one, where each runs (see slices)
                events, ctx, attempts = RawRun(run_items(payload)), None, 0
            else:
                events, ctx, attempts = decode_events(payload, flags, buffers)
            report = bool(flags & FLAG_REPORT)
            if report:
                self.submitted = True
        except BaseException as exc:  # a payload raising SystemExit on load: the worker lives on
            for n in range(count):
                self.report(pos + n, DECODE_HANDLER, None, exc, WHOLE_EVENT)
            self.controls.set_control(CUR_POS, progress_word(pos + count, self.quiet))
            return None
        finally:
            if self.timeout_ns:
                words[index] = 0
        decoded = (events, ctx if ctx is not None else BACKGROUND, attempts, report)
        self.last_decoded = ((slot, seq), decoded)
        return decoded

    def run_batch(self, job: int, entries: list[Entry], key: int, route_index: int) -> None:
        self.start_job(job, entries)
        projection: Hashable = list(self.routes.batches)[key]
        route: BatchRoute = self.routes.batches[projection][route_index]
        if self.timeout_ns:
            route = BatchRoute(route.size, self.timed(route.handler, route.name), route.name)
        # A projection that only shares the hash of the batch projection is not delivered.
        chunk = [item for item in self.items() if item.event.projection == projection]
        if chunk:
            reset = current_emitter.set(self.emit)
            try:
                run_chunk(route, chunk, self, catch=BaseException, index=route_index, awaiting=self.defer_batch,
                          emit=self.emit)
            finally:
                current_emitter.reset(reset)
        self.finish_job()

    # -- handler_timeout: each call publishes its deadline for the parent to enforce ---------
    def timed_chain(self, projection: Hashable) -> tuple[tuple[Any, str], ...]:
        chain = self.timed_chains.get(projection)
        if chain is None:
            chain = tuple((self.timed(fn, name), name) for fn, name in self.routes.chains(projection))
            self.timed_chains[projection] = chain
        return chain

    def timed(self, fn: Any, name: str) -> Any:
        """``fn`` (a handler in its middleware chain, or a batch handler) writing the deadline
        of each call into CALL_DEADLINE while it runs. The parent kills a worker whose call is
        past it: a running call cannot be stopped any other way (it may never return).

        A call that returns an awaitable (``async def``) is over at once as far as the word is
        concerned; what it awaits is bounded on the worker's loop instead, where it can be
        cancelled: past the deadline it ends with ``TimeoutError`` and the worker lives on. A
        coroutine that blocks the loop without awaiting is not bounded (nothing can stop it
        short of the process, and the loop runs the other events' continuations too)."""
        words, base = self.progress
        index, limit = base + CALL_DEADLINE, self.timeout_ns

        def call(ctx: Context, arg: Any) -> Any:
            started = time.monotonic()
            words[index] = deadline_word(limit, ctx.deadline)
            try:
                result = fn(ctx, arg)
            finally:
                words[index] = 0
            if returns_awaitable(result):
                seconds = limit / 1e9 - (time.monotonic() - started)
                remaining = ctx.remaining()
                by_ctx = remaining is not None and remaining < seconds
                return _bounded(result, remaining if by_ctx else seconds, name, by_ctx, limit / 1e9)
            return result

        return call

    def items(self) -> Iterator[Item]:
        """The job's events as pipeline items, numbered by position (for batch calls)."""
        for events, ctx, attempts, pos, report in self.slices():
            if report:
                self.reporting.update(range(pos, pos + len(events)))
            for offset, event in enumerate(events):
                yield Item(event, ctx, attempts, None, pos + offset)

    # -- observer: outcomes go to the parent ----------------------------------------
    def before(self, item: Item, handler: str) -> None:
        return None

    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
              route: int = -1) -> None:
        if error is not None or self.want_outcomes or item.token in self.reporting:
            self.report(item.token, handler, result, error, 0)
        else:
            self.quiet += 1

    def report(self, pos: int, handler: str, result: Result | None, error: BaseException | None,
               call: int, job: int | None = None) -> None:
        """Send the outcome of call number ``call`` (of event ``pos``'s handlers) to the parent,
        which counts it, fires the hooks and makes the dead letter."""
        if error is not None:
            error = portable_exception(error, f"raised in busmp worker process {os.getpid()} by handler {handler}")
        words, index = self.progress[0], self.progress[1] + CALL_DEADLINE
        if self.timeout_ns:  # pickling a result runs its own code, which may never return
            words[index] = deadline_word(self.timeout_ns, None)
        try:
            body = dumps((result, error))[0]
        except BaseException as exc:  # an unpicklable Result.value (SystemExit included: the worker lives on)
            error = RemoteError(type(exc).__name__,
                                f"handler {handler} returned a result that cannot be pickled: {exc!r}")
            body = dumps((None, error))[0]
        finally:
            if self.timeout_ns:
                words[index] = 0
        name = handler.encode()[:0xFFFF]
        head = OUTCOME_HEAD.pack(self.job if job is None else job, pos, len(name), error is not None, call)
        self.put_result(OUTCOME, head + name + body)

    def emit(self, event: Event, ctx: Context) -> None:
        room = self.followup_room()
        if room is not None and room <= 0:
            raise BufferFull(followups_refused_here())
        payload, flags, _ = encode_event(event, ctx if ctx is not BACKGROUND else None, out_of_band=False)
        self.put_result(FOLLOWUP, FOLLOWUP_HEAD.pack(flags) + payload)
        self.emitted += 1

    def followup_room(self) -> int | None:
        """How many more follow-ups this worker may emit (max_followups): the room the parent
        last wrote into the result channel, less what this worker sent that it has not read
        yet. A storm is refused here, in the emitting handler, as in sync mode; other workers'
        sends in transit are not seen, so the store may go past the cap by a little, never for
        long. None where there is no such channel (a Ray actor has its own, see ``busmp._ray.actor``)."""
        results = getattr(self, "results", None)
        if results is None:
            return None
        return int(results.control(FOLLOWUP_ROOM) - (self.emitted - results.control(FOLLOWUPS_TAKEN)))

    def read_slot(self, slot: int, seq: int) -> tuple[Any, int, list[Any]]:
        """What a slot holds: payload, codec flags, out-of-band buffers."""
        return self.ring.read(slot, seq)

    def put_result(self, kind: int, payload: bytes) -> None:
        """One record for the parent (an outcome, a follow-up, a finished job...)."""
        self.results.put(kind, payload, self.wait_for_parent)
        self.sent += 1

    def wait_for_parent(self) -> None:
        """The result channel is full: wake the parent and give it a moment."""
        self.notify_parent()
        time.sleep(0.0002)
        if not self.parent_alive():
            raise SystemExit(0)


class RawRun(list):  # type: ignore[type-arg]
    """A run's events still encoded (views of the slot): ``slices`` decodes them one by one."""


class _Reporter:
    """A continuation's observer: every outcome goes to the parent, under the continuation's
    own job (the worker has moved on), numbered by call along one event's chain."""

    watches_before = False

    def __init__(self, worker: Worker, job: int, call: int, chain: bool) -> None:
        self.worker, self.job, self.call, self.chain = worker, job, call, chain

    def before(self, item: Item, handler: str) -> None:
        return None

    def after(self, item: Item, handler: str, result: Result | None, error: BaseException | None,
              route: int = -1) -> None:
        self.worker.report(item.token, handler, result, error, self.call, self.job)
        if self.chain:
            self.call += 1


class Controls(Protocol):
    """Where a worker writes its progress words (a job channel's control words)."""

    def set_control(self, i: int, value: int) -> None: ...
    def control_words(self) -> tuple[Any, int]: ...


async def _bounded(awaitable: Any, seconds: float | None, name: str, by_ctx: bool, limit: float) -> Any:
    """Await an async handler's call for at most ``seconds`` (see ``Worker.timed``)."""
    import asyncio

    try:
        return await asyncio.wait_for(awaitable, max(seconds or 0.0, 0.0))
    except TimeoutError:
        what = "its context's deadline" if by_ctx else f"handler_timeout={limit:g} s"
        raise TimeoutError(f"handler {name} ran past {what}; the awaiting call was cancelled") from None


def followups_refused_here() -> str:
    return ("ctx.emit refused: the store's max_followups follow-up events are outstanding, and emit "
            "stays refused until every one of them has been handled. A handler that emits more than "
            "one event per event it handles makes a storm that never ends; emit fewer, or raise "
            "EventStore(..., max_followups=N)")


class Owner:
    """The store's process, as a worker watches it.

    On Linux a pidfd: it becomes readable when the process ends, so the watchdog sleeps until
    then instead of polling, and a recycled PID cannot fool it. Elsewhere psutil, which checks
    the process's start time for the same reason; it is imported only there.
    """

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        self._process: Any = None
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # not Linux >= 5.3, or the process is gone already
            import psutil

            try:
                self._process = psutil.Process(pid)
            except psutil.Error:
                self._process = None

    def alive(self) -> bool:
        if self._fd is not None:
            return not select.select([self._fd], [], [], 0)[0]
        return self._process is not None and bool(self._process.is_running())

    def wait_until_gone(self) -> None:
        if self._fd is not None:
            select.select([self._fd], [], [])
            return
        while self.alive():
            time.sleep(PARENT_CHECK_SECONDS)

    def close(self) -> None:
        """Release the pidfd; only once nobody waits on it (a worker's watchdog waits to the end)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _start_watchdog(owner: Owner) -> None:
    """Exit when the parent dies, even while a handler runs for minutes."""

    def watch() -> None:
        owner.wait_until_gone()
        os._exit(0)

    threading.Thread(target=watch, name="busmp-watchdog", daemon=True).start()
