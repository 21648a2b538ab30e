"""The Ray executor: the parent's side of ``backend="ray"``.

``submit`` plans jobs as the process pool does (``_workers.jobs``, with larger jobs: a Ray call
costs far more than a job record in shared memory) and sends each job as one actor call that
carries the payloads of its slots (see ``actor``). Each actor holds at most ``CALLS_IN_FLIGHT``
calls; the other jobs wait in ``unassigned``, and a job's slots stay taken until its call
returns, so a ring full of work in flight makes ``subscribe`` wait under ``BLOCK``.

A call's result reaches the collector thread (``busmp-ray-collector-...``) through the
``concurrent.futures`` future of its object ref; the collector settles the records exactly as
the process pool's collector does (``_workers.collector.take_record``): hooks, dead letters
and metrics in this process, follow-ups written into free slots as new work.

An actor that dies (its process killed, ``os._exit``, its node lost) fails every call it
held with ``RayActorError``: the events of those calls become ``WorkerCrashed`` dead letters
(pid as the actor reported it, exit code ``None``), and a new actor takes its place. A call's
results arrive whole or not at all, so events of a dying call whose handlers had already run
are dead letters too: busmp never learns of them, and never runs them again.

``handler_timeout``: the collector asks each actor that holds calls, a tenth of the timeout
apart, whether its running call is past its deadline (``TimedBusActor.overdue``, answered on
the actor's own clock). One that is reports where its job stands and the records the job has
made so far: the collector settles those records, charges the running call with
``TimeoutError`` and the rest of its event's fan-out with ``WorkerCrashed`` (the process
pool's ``on_death`` semantics), hands the events not started (the rest of that job, the calls
sent after it: an actor runs its calls in turn) to the front of the queue, kills the actor
(``ray.kill``) and starts a new one in its place.

A job belongs to whoever takes it out of its actor position's ``outstanding`` under the lock:
the returning call settles it, or a death or a timeout charges (or hands over) it, never
both. A result that arrives for a job no longer there is dropped (the call of a killed actor
that returned after all). The calls an actor finished before the one that timed out stay
with their results, which are on their way (or fail, and are charged as a death's).

Lock order: ``RayExecutor.lock`` → ``Bus.lock`` → accounting. Hooks run with no lock held,
in the collector thread, or in the thread that drains (dead letters of the close).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import site
import sys
import sysconfig
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import cloudpickle
import numpy as np
import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from .._dispatch import Routes
from .._errors import BusError, StoreClosed, WorkerCrashed
from .._pipeline import Ticket
from .._transport.codec import decode_event
from .._transport.packing import Encoded
from .._transport.records import BATCH
from .._transport.stats import BUSY, DEAD, IDLE, STARTING
from .._transport.records import split_call_word
from .._workers.collector import take_record
from .._workers.executor import Host, place_backlog
from .._workers.feeder import pickle_routes
from .._workers.jobs import (
    MAX_JOB, Job, Planner, charge_calls, end_job, plan_referenced, record_outcome, split_unstarted, timeout_error,
)
from .._workers.pool import _frontier
from . import cluster
from .actor import REMOTE_ACTOR, REMOTE_TIMED_ACTOR, Overdue

__all__ = ["RayExecutor"]

log = logging.getLogger("busmp")

CALLS_IN_FLIGHT = 2       # calls an actor holds at once: one running, one on its way
JOBS_PER_ACTOR = 4        # a publish is cut into at least this many calls per actor (balance)
MAX_CALL = 2 * MAX_JOB    # events per call
READY_SECONDS = 60.0      # how long a new store waits for its actors to start
EARLY_DEATHS_ALLOWED = 3  # actors that die before starting, in a row, before we give up
CRASH_HANDLER = "busmp.ray.actor"
ASK_SECONDS = (0.02, 1.0)  # how often actors are asked for an overdue call: timeout / 10, within these
_STOP = object()


@dataclass(eq=False)
class ActorSlot:
    """One of the N actor positions; a replacement actor takes the same position."""

    index: int
    actor: Any = None
    generation: int = 0           # bumped when the actor is replaced: late results are ignored
    pid: int | None = None        # as the actor reported it (None until it has)
    routes_key: object = None     # the routes the actor has
    outstanding: dict[int, Job] = field(default_factory=dict)  # jobs of calls in flight
    sent: dict[int, int] = field(default_factory=dict)  # their actor's generation, by job id
    queued: int = 0               # events in those calls
    asking: bool = False          # an overdue() call to this actor is on its way (handler_timeout)
    handled: int = 0              # events of calls that returned


class _Planner(Planner):
    def _job_size(self, events: int, ticket: Ticket | None) -> int:
        if ticket is not None:
            return max(events, 1)  # one job: the group's order holds
        return max(1, min(MAX_CALL, -(-events // (self.workers * JOBS_PER_ACTOR))))


class RayExecutor:
    def __init__(self, host: Host, workers: int, options: dict[str, Any], prefix: str,
                 handler_timeout: float | None = None) -> None:
        self.workers = workers
        self.handler_timeout = handler_timeout
        low, high = ASK_SECONDS
        self._niceness = os.getpriority(os.PRIO_PROCESS, 0)  # the actors' (see actor.match_niceness)
        self._ask_every = None if not handler_timeout else min(high, max(low, handler_timeout / 10))
        self.host = host
        self.lock = threading.RLock()
        self._quiet = threading.Condition(self.lock)  # a call returned (shutdown waits on it)
        self.refs = [0] * host.slots.slot_count
        self.planner = _Planner(host.slots, workers)
        self.jobs: dict[int, Job] = {}
        self.backlog: deque[Encoded] = deque()
        self.unassigned: deque[Job] = deque()
        self.closing = False
        self._released = False
        self._detached = False
        self._broken: str | None = None
        self._early_deaths = 0
        self._last_death: tuple[int, int | None] = (0, None)
        self._routes_cache: tuple[object, int, bytes] | None = None
        self._routes_id = 0
        self._arrivals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.actors = [ActorSlot(i) for i in range(workers)]
        cluster.join()
        try:
            self._options = cluster.actor_options(options, workers)
            for slot in self.actors:
                self._start(slot)
            self._wait_ready(time.monotonic() + READY_SECONDS)
        except BaseException:
            self._kill_all()
            cluster.leave()
            raise
        self._thread = threading.Thread(target=self._collect, name=f"busmp-ray-collector-{prefix}", daemon=True)
        self._thread.start()

    def _start(self, slot: ActorSlot) -> None:
        """Start an actor at ``slot``'s position; its pid arrives later (``_pid_arrived``)."""
        slot.generation += 1
        actor = REMOTE_TIMED_ACTOR if self.handler_timeout else REMOTE_ACTOR
        slot.actor = actor.options(**self._options).remote(self.handler_timeout, self._niceness)
        slot.pid, slot.routes_key, slot.asking = None, None, False
        self.host.stats_block.set_worker(slot.index, 0, STARTING)
        generation = slot.generation
        slot.actor.pid.remote().future().add_done_callback(
            lambda future: self._pid_arrived(slot, generation, future))

    def _pid_arrived(self, slot: ActorSlot, generation: int, future: Future[Any]) -> None:
        try:
            pid = future.result()
        except Exception:
            return  # it died first: its calls fail too, and say so
        with self.lock:
            if slot.generation == generation:
                slot.pid = int(pid)
                self._early_deaths = 0
                self._write_line(slot)

    def _wait_ready(self, deadline: float) -> None:
        for slot in self.actors:
            try:
                pid = ray.get(slot.actor.pid.remote(), timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                raise BusError(
                    f"the busmp Ray actors did not start within {READY_SECONDS:.0f} s: the cluster may "
                    f"have no room for {self.workers} actors with {self._options}; lower num_cpus in "
                    "ray_actor_options, use fewer workers, or add nodes") from None
            except RayError as exc:
                raise BusError(
                    f"a busmp Ray actor could not start ({type(exc).__name__}: {exc}); every node needs "
                    "busmp installed (pip install 'busmp[ray]'), or pass "
                    "ray_actor_options={'runtime_env': {'pip': ['busmp[ray]']}}") from exc
            with self.lock:
                slot.pid = int(pid)
                self._write_line(slot)
        try:
            niceness = ray.get(self.actors[0].actor.niceness.remote(), timeout=max(0.0, deadline - time.monotonic()))
        except RayError:
            return  # it died meanwhile: its calls fail too, and say so
        if niceness > self._niceness:
            log.info("busmp store %r: the Ray actors run at niceness %d (this process: %d) and may not "
                     "change it, so on a busy machine they yield to every other process; start the "
                     "cluster with RAY_worker_niceness=%d in its environment (ray start) to run them "
                     "as local workers run", self.host.name, niceness, self._niceness, self._niceness)

    # -- submitting ---------------------------------------------------------------
    def check_routes(self, routes: Routes, key: object) -> None:
        self._routes_payload(routes, key)

    def _routes_payload(self, routes: Routes, key: object) -> tuple[int, bytes]:
        """The routes pickled for the actors, once per change; ``TypeError`` naming the handler."""
        cached = self._routes_cache
        if cached is None or cached[0] != key:
            self._routes_id += 1
            cached = (key, self._routes_id, pickle_routes_by_value(routes))
            self._routes_cache = cached
        return cached[1], cached[2]

    def submit(self, slots: Sequence[int], ticket: Ticket | None = None) -> None:
        listed = list(slots)
        refused: TypeError | None = None
        with self.lock:
            self.host.slots.sync_header()
            routes, key = self.host.routes_and_key()
            try:
                self._routes_payload(routes, key)
            except TypeError as exc:  # a handler registered since publish() checked the routes
                refused = exc
            jobs, idle = plan_referenced(self.planner, self.refs, listed, routes, ticket,
                                         [slot.queued for slot in self.actors])
            for job in jobs:
                job.routes = (routes, key)
                self.jobs[job.id] = job
                if refused is not None:
                    continue
                if ticket is not None and self.actors[job.worker].actor is not None:
                    self._send(self.actors[job.worker], job)  # a group stays on one actor, in order
                else:
                    self.unassigned.append(job)
            if refused is None:
                self._feed()
            no_jobs = ticket is not None and ticket.jobs == 0
        if idle:
            self.host.release(idle)  # no handler wants these events
        if refused is not None:
            for job in jobs:  # nothing vanishes: no actor can run these, so they are dead letters
                self._charge(job, refused)
            raise refused
        if no_jobs and ticket is not None:
            ticket.done.set()
        if self._broken is not None:
            self._fail_orphans()
            raise BusError(self._broken)

    def _feed(self) -> None:
        """Give each live actor calls until it holds ``CALLS_IN_FLIGHT``. Under the lock."""
        while self.unassigned:
            free = [s for s in self.actors if s.actor is not None and len(s.outstanding) < CALLS_IN_FLIGHT]
            if not free:
                return
            for slot in free:
                if not self.unassigned:
                    return
                job = self.unassigned.popleft()
                job.worker = slot.index
                self._send(slot, job)

    def _send(self, slot: ActorSlot, job: Job) -> None:
        """One call: the job, the payloads of its slots, the routes if the actor lacks them."""
        assert job.routes is not None
        routes, key = job.routes
        routes_id, data = self._routes_payload(routes, key)
        shipped = data if slot.routes_key != key else None
        payloads: list[tuple[int, int, Any, int, int]] = []
        buffers: list[np.ndarray] = []
        for slot_index, seq, _start, _stop in job.entries:
            try:
                payload, flags, extra = self.host.slots.read(slot_index, seq)
            except Exception:  # the actor reports it as undecodable, charged to these events
                payloads.append((slot_index, seq, None, 0, 0))
                continue
            payloads.append((slot_index, seq, pickle.PickleBuffer(payload), flags, len(extra)))
            buffers.extend(np.frombuffer(buffer, np.uint8) for buffer in extra)
        want = self.host.accounting.wants_results
        ordered = job.ticket is not None  # a group's async def handlers are awaited in turn
        room = self.host.followup_room()  # what ctx.emit may send during this call (max_followups)
        call = ((routes_id, want, shipped, room), (job.id, job.kind, *job.batch, job.entries, ordered), payloads)
        ref = slot.actor.run.remote(pickle.dumps(call, 5), *buffers)
        slot.routes_key = key
        slot.outstanding[job.id] = job
        slot.sent[job.id] = slot.generation
        slot.queued += job.events
        generation = slot.generation
        ref.future().add_done_callback(lambda future: self._arrivals.put((slot, generation, job, future)))

    def _write_line(self, slot: ActorSlot, busy: bool = False) -> None:
        """The statistics line of an actor position, which the parent writes for the actor."""
        self.host.stats_block.set_worker(slot.index, slot.pid or 0, BUSY if busy else IDLE, slot.handled)

    def wait(self, ticket: Ticket, timeout: float | None) -> None:
        if not ticket.done.wait(timeout):
            raise TimeoutError("events were not handled in time")

    def help_collect(self, done: Callable[[], bool], seconds: float) -> None:
        return None  # results arrive through Ray's threads; the collector takes them in

    def attend(self, change: int) -> None:
        return None  # actors report every batch as it ends

    def per_worker(self) -> tuple[int, ...]:
        return tuple(slot.handled for slot in self.actors)

    # -- results ------------------------------------------------------------------
    def _collect(self) -> None:
        ask_at = time.monotonic()
        while True:
            wait = None if self._ask_every is None else max(0.0, ask_at - time.monotonic())
            try:
                arrival = self._arrivals.get(timeout=wait)
            except queue.Empty:
                arrival = None
            if arrival is _STOP:
                return
            try:
                if arrival is not None:
                    self._arrived(*arrival)
                if self._ask_every is not None and time.monotonic() >= ask_at:
                    ask_at = time.monotonic() + self._ask_every
                    self._ask_overdue()
            except Exception:  # a bug in here must not stop every later result from arriving
                log.exception("busmp Ray collector: unexpected error; carrying on")

    def _arrived(self, slot: ActorSlot, generation: int, job: Job | None, future: Future[Any]) -> None:
        if job is None:
            self._answered(slot, generation, future)
            return
        try:
            blob = future.result()
        except RayTaskError as exc:  # busmp's own code failed in the actor, which lives on
            with self.lock:
                if slot.generation == generation:
                    slot.routes_key = None  # ship the routes again with the next call
                mine = self._take(slot, job, generation)
            cause = exc.cause if isinstance(exc.cause, BaseException) else exc
            if mine:
                self._charge(job, cause)
            return
        except (RayActorError, RayError):  # the actor is gone (or unreachable): replace it
            with self.lock:
                # A call of an actor killed for a timeout, which it had finished: its result is lost.
                left_over = slot.generation != generation and self._take(slot, job, generation)
            if left_over:
                self._charge(job, WorkerCrashed(self._last_death[0], None))
            else:
                self._on_death(slot, generation)
            return
        with self.lock:
            if not self._holds(slot, job, generation):
                return  # charged already (its actor was killed for a timeout): dropped
            slot.handled += job.events
            if slot.generation == generation and slot.pid is not None:
                self._write_line(slot, len(slot.outstanding) > 1)
        for kind, payload in pickle.loads(blob):
            take_record(self, kind, payload)
        self.place_backlog()

    @staticmethod
    def _holds(slot: ActorSlot, job: Job, generation: int) -> bool:
        """``job`` is still a call of the actor of ``generation`` at ``slot`` (under the lock):
        not charged, nor handed over (perhaps to the actor that now holds that position)."""
        return slot.outstanding.get(job.id) is job and slot.sent.get(job.id) == generation

    def _take(self, slot: ActorSlot, job: Job, generation: int) -> bool:
        """Take ``job`` out of ``slot``'s calls (under the lock): True if it was still a call
        of the actor of ``generation``; from then on the caller decides what becomes of it."""
        if not self._holds(slot, job, generation):
            return False
        del slot.outstanding[job.id]
        del slot.sent[job.id]
        slot.queued -= job.events
        return True

    # -- handler_timeout ----------------------------------------------------------------
    def _ask_overdue(self) -> None:
        """Ask every actor that holds calls whether the one it runs is past its deadline."""
        with self.lock:
            if self.closing:
                return
            for slot in self.actors:
                if slot.actor is None or not slot.outstanding or slot.asking:
                    continue
                slot.asking = True
                answer = slot.actor.overdue.remote().future()
                answer.add_done_callback(functools.partial(self._put_answer, slot, slot.generation))

    def _put_answer(self, slot: ActorSlot, generation: int, future: Future[Any]) -> None:
        self._arrivals.put((slot, generation, None, future))

    def _answered(self, slot: ActorSlot, generation: int, future: Future[Any]) -> None:
        with self.lock:
            if slot.generation != generation:
                return
            slot.asking = False
        try:
            seen = future.result()
        except Exception:  # the actor is gone: its calls fail too, and say so
            return
        if seen is not None:
            self._time_out(slot, generation, seen)

    def _time_out(self, slot: ActorSlot, generation: int, seen: Overdue) -> None:
        """The actor at ``slot`` runs a call past its deadline: settle what its job reported,
        charge the call (``TimeoutError``) and the rest of its event, hand what never started
        to the other actors, kill the actor and start another."""
        job_id, cur_pos, call, quiet, word, records = seen
        with self.lock:
            current = slot.outstanding.get(job_id)
            if slot.generation != generation or self.closing or current is None \
                    or not self._holds(slot, current, generation):
                return  # its call has returned meanwhile (or the store is closing)
            jobs = list(slot.outstanding.values())
            unstarted = jobs[jobs.index(current) + 1:]  # sent after it: an actor runs its calls in turn
            for job in (current, *unstarted):
                self._take(slot, job, generation)
            pid, old = slot.pid or 0, slot.actor
            log.warning("busmp store %r: Ray actor %d (pid %s): a handler call ran past its deadline; "
                        "killing the actor", self.host.name, slot.index, pid)
            self._last_death = (pid, None)
            self.host.stats_block.set_worker(slot.index, pid, DEAD)
            self._start(slot)
        _kill(old)
        for kind, payload in records:  # what the job reported before its call hung
            take_record(self, kind, payload)
        call_pos, calls = split_call_word(call)
        first, quiet_at = _frontier(current, cur_pos, calls if call_pos == cur_pos else 0)
        with self.lock:
            tail = split_unstarted(current, first[0], self.planner.new_job_id(), self.refs)
            if tail is not None:
                self.jobs[tail.id] = tail
                unstarted.insert(0, tail)
            self.unassigned.extendleft(reversed(unstarted))
            self._feed()
            slot.handled += first[0]
        self.host.accounting.count(quiet + quiet_at, 0)
        timed_out = timeout_error(word, self.handler_timeout, f"its Ray actor (pid {pid})")
        charge_calls(self, current, first, WorkerCrashed(pid, None), timed_out,
                     first[0] if current.kind != BATCH else None)
        self.place_backlog()

    # -- job bookkeeping (as the process pool's) ------------------------------------
    def settle(self, job: Job, pos: int, name: str, result: Any, error: BaseException | None,
               counted: bool, cut: bool = False) -> None:
        """One outcome of event ``pos`` of ``job``: hooks, dead letter, counters, and the
        event's future if it was submitted (``cut``: the event dies with this error)."""
        item = self.host.item_at(*job.locate(pos), job.ticket)
        record_outcome(item.submission, job, result, error, cut)
        accounting = self.host.accounting
        accounting.before(item, name)
        accounting.settle(item, name, result, error, counted=counted)

    def finish(self, job: Job) -> None:
        """``job`` is done: its slots' references drop, slots nobody names go back to the bus."""
        with self.lock:
            if self.jobs.pop(job.id, None) is None:
                return
            slot = self.actors[job.worker]
            if slot.outstanding.pop(job.id, None) is not None:
                slot.queued -= job.events
                slot.sent.pop(job.id, None)
            done, ticket_done = end_job(job, self.refs)
            if self.unassigned and not self.closing:
                self._feed()
            self._quiet.notify_all()
        if done:
            self.host.release(done)
        if ticket_done and job.ticket is not None:
            job.ticket.done.set()

    def park(self, job: Job) -> None:
        return None  # an actor folds PARKED into the call's DONE: a call ends with its job

    def _charge(self, job: Job, error: BaseException) -> None:
        """Every (event, handler) call of ``job`` becomes a dead letter with ``error``, named
        after its handler (a call's results arrive whole or not at all); the job ends."""
        charge_calls(self, job, (0, 0), error)

    def place_backlog(self) -> None:
        """Move follow-ups into free slots and submit them; the rest wait for released slots."""
        if self.backlog and not self.closing:
            place_backlog(self.host, self.backlog, self.submit)

    # -- deaths -------------------------------------------------------------------
    def _on_death(self, slot: ActorSlot, generation: int) -> None:
        """The actor at ``slot`` is gone: charge every call it held, start a replacement."""
        with self.lock:
            if slot.generation != generation:
                return  # this actor was charged already (its other calls fail too)
            dead = list(slot.outstanding.values())
            slot.outstanding.clear()
            slot.sent.clear()
            slot.queued = 0
            pid, old = slot.pid, slot.actor
            self._last_death = (pid or 0, None)
            self.host.stats_block.set_worker(slot.index, pid or 0, DEAD)
            if self.closing:
                slot.generation += 1
                slot.actor = None
            else:
                self._replace(slot, pid)
        _kill(old)
        error: BaseException = (StoreClosed("the store was drained before the event was handled")
                                if self.closing else WorkerCrashed(pid or 0, None))
        for job in dead:
            self._charge(job, error)
        if self._broken is not None:
            self._fail_orphans()

    def _replace(self, slot: ActorSlot, pid: int | None) -> None:
        log.warning("busmp Ray actor %d (pid %s) died; starting a replacement", slot.index, pid)
        self._early_deaths = 0 if pid is not None else self._early_deaths + 1
        if self._early_deaths >= EARLY_DEATHS_ALLOWED:
            self._broken = ("busmp Ray actors die before starting; check that every node of the cluster "
                            "has busmp installed and enough memory (see the Ray logs)")
            slot.generation += 1
            slot.actor = None
            return
        self._start(slot)
        self._feed()

    def _fail_orphans(self) -> None:
        """No replacement will start: once no actor is left, the jobs none holds are dead letters."""
        with self.lock:
            if any(slot.actor is not None for slot in self.actors):
                return
            orphans = list(self.unassigned)
            self.unassigned.clear()
        for job in orphans:
            self._charge(job, WorkerCrashed(*self._last_death))

    # -- shutting down ----------------------------------------------------------------
    def shutdown(self, timeout: float | None) -> None:
        """Let calls in flight return (up to ``timeout``), then kill the actors; what they still
        held, what no actor took and follow-ups not yet placed become ``StoreClosed`` dead letters."""
        with self.lock:
            if self.closing:
                return
            self.closing = True
            orphans = list(self.unassigned)
            self.unassigned.clear()
        for job in orphans:
            self._charge(job, StoreClosed("the store was drained before the event was handed to a Ray actor"))
        deadline = time.monotonic() + (timeout if timeout is not None else 5.0)
        with self.lock:
            while any(slot.outstanding for slot in self.actors):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._quiet.wait(remaining)
        self._stop_collector()
        with self.lock:
            left = [job for slot in self.actors for job in slot.outstanding.values()]
            for slot in self.actors:
                slot.outstanding.clear()
                slot.sent.clear()
                slot.queued = 0
                slot.generation += 1
        for job in left:
            self._charge(job, StoreClosed("the store was drained before the event was handled"))
        while self.backlog:
            payload, flags, _, _, _ = self.backlog.popleft()
            event = decode_event(payload, flags)[0]
            self.host.accounting.dead_letter(event, StoreClosed("store drained before the follow-up ran"), 1,
                                             CRASH_HANDLER)
            self.host.finished(1)
            self.host.followups_done(1)
        self._release()

    def abandon(self) -> None:
        """The store was garbage-collected undrained: kill the actors, report nothing."""
        with self.lock:
            self.closing = True
        self._stop_collector()
        self._release()

    def _stop_collector(self) -> None:
        self._arrivals.put(_STOP)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _release(self) -> None:
        with self.lock:
            if self._released:
                return
            self._released = True
        self._kill_all()

    def detach(self) -> None:
        """The store released everything: stop using the cluster (once)."""
        with self.lock:
            if self._detached:
                return
            self._detached = True
        try:
            cluster.leave()
        except Exception:  # Ray shut down first (interpreter exit)
            pass

    def _kill_all(self) -> None:
        for slot in self.actors:
            _kill(slot.actor)
            slot.actor = None
            self.host.stats_block.set_worker(slot.index, slot.pid or 0, DEAD)


_by_value_lock = threading.Lock()


def pickle_routes_by_value(routes: Routes) -> bytes:
    """``pickle_routes``, with the program's own modules pickled by value: a node of the
    cluster has the installed packages (busmp among them) but not the program's files, so a
    handler from ``__main__``, a script's directory or a test module travels as code."""
    modules = {module for module in map(_module_of, _callables(routes)) if module is not None}
    with _by_value_lock:
        registered = cloudpickle.list_registry_pickle_by_value()
        added = [m for m in modules if m.__name__ not in registered and _is_programs_own(m)]
        for module in added:
            cloudpickle.register_pickle_by_value(module)
        try:
            return pickle_routes(routes)
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


def _callables(routes: Routes) -> list[Any]:
    return [*(h for hs in routes.handlers.values() for h in hs),
            *(r.handler for rs in routes.batches.values() for r in rs), *routes.middleware]


def _module_of(fn: Any) -> ModuleType | None:
    name = getattr(fn, "__module__", None) or getattr(type(fn), "__module__", None)
    return sys.modules.get(name) if isinstance(name, str) else None


_INSTALLED = tuple({os.path.realpath(path) + os.sep for path in (
    *(sysconfig.get_paths().get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib")),
    *site.getsitepackages()) if path})


def _is_programs_own(module: ModuleType) -> bool:
    """Not installed (nor busmp, nor built in): ``__main__`` or a file of the program's."""
    if module.__name__ == "__main__":
        return False  # cloudpickle sends __main__ by value already
    if module.__name__.split(".")[0] in ("busmp", "builtins"):
        return False
    path = getattr(module, "__file__", None)
    return path is not None and not os.path.realpath(path).startswith(_INSTALLED)


def _kill(actor: Any) -> None:
    if actor is None:
        return
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # gone already, or Ray shut down first (interpreter exit)
        pass
