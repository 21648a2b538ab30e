"""The Ray actor: a local worker's pipeline, fed by calls instead of shared memory.

One call carries one job (see ``_workers.jobs``) and the payloads of the slots it names, as
the ring holds them: the parent pickles them into one ``bytes`` object, with out-of-band
buffers (large numpy payloads) as separate arguments so Ray's object store carries them
without a copy into the pickle. The actor runs the job with the very code a worker process
runs (:class:`~busmp._workers.worker.Worker`: fan-out with middleware chains, batch calls,
outcomes, ``ctx.emit``) and returns the records a worker would have written to its result
channel (outcomes, follow-ups, DONE), pickled as one ``bytes`` object.

Handlers arrive once per change of the routes, as ``pickle_routes`` made them (cloudpickle,
by value), so a handler defined in ``__main__`` or in a module the cluster lacks still runs.

``handler_timeout``: the worker writes each call's deadline into its progress words as a local
worker does (``Worker.timed``), here a list in the actor's memory. :class:`TimedBusActor` runs
calls in a thread of their own and answers ``overdue()`` from another (a Ray concurrency
group), so the parent can ask while a call runs: past the deadline (on the actor's own clock)
the answer is where the job stands and the records it has so far, which the parent settles
before it kills the actor (see ``executor``). A call that holds the GIL and never lets go
(a C extension's loop) keeps ``overdue()`` from running, and is not stopped.
"""

from __future__ import annotations

import os
import pickle
import time
from typing import Any

import ray

from .._transport.ring import CorruptSlot
from .._transport.records import (
    CALL_DEADLINE, CUR_CALL, CUR_JOB, CUR_POS, DONE, DONE_REC, EVENTS, PARKED, PARKED_REC, Entry,
    split_deadline_word, split_progress_word,
)
from .._workers.worker import _FOR_ALL, Worker

__all__ = ["BusActor", "TimedBusActor", "REMOTE_ACTOR", "REMOTE_TIMED_ACTOR", "ActorWorker", "Call",
           "CONTROL_WORDS", "Overdue"]

CONTROL_WORDS = 16  # room for the progress words a worker writes (see _transport.records)

#: What one call carries: (routes id, want outcomes, routes pickle or None when the actor has
#: them, follow-up room), (job id, kind, projection index, route index, entries, ordered), and per
#: slot of the job (slot, seq, payload or None when the parent could not read it, flags,
#: out-of-band buffers).
Call = tuple[tuple[int, bool, bytes | None, int], tuple[int, int, int, int, list[Entry], bool],
             list[tuple[int, int, Any, int, int]]]
#: What ``overdue()`` reports of a call past its deadline: its job, the events done (CUR_POS), CUR_CALL,
#: the quiet calls of the events done, the deadline word, and the records the job has made so far.
Overdue = tuple[int, int, int, int, int, list[tuple[int, bytes]]]


class _Progress:
    """A worker's progress words, kept here: a dead actor's progress dies with it (the parent
    charges every event of the calls it held)."""

    def __init__(self) -> None:
        self.words = [0] * CONTROL_WORDS

    def set_control(self, i: int, value: int) -> None:
        self.words[i] = value

    def control_words(self) -> tuple[Any, int]:
        return self.words, 0


class ActorWorker(Worker):
    """A :class:`Worker` whose slots come with the call and whose records go back as its result."""

    def __init__(self, handler_timeout: float | None = None) -> None:
        # No ring, channels or parent to watch (Ray does that), no statistics line (the parent
        # writes the actor's).
        self.start_running(_Progress())
        self.timeout_ns = int(handler_timeout * 1e9) if handler_timeout else 0
        self.routes_id = -1
        self.payloads: dict[int, tuple[int, Any, int, list[Any]]] = {}
        self.out: list[tuple[int, bytes]] = []
        self.parked_quiet: dict[int, int] = {}
        self.room = 0

    def run_call(self, blob: bytes, buffers: tuple[Any, ...]) -> bytes:
        """Run one job; return its records once every handler of it has ended, ``async def``
        ones included (they overlap while they await, unless the job keeps its order)."""
        (routes_id, want, routes, room), (job, kind, key, route, entries, ordered), slots = pickle.loads(blob)
        if routes is not None:
            self.routes_id = -1
            self.routes, self.want_outcomes = pickle.loads(routes), want
            self.routes_id = routes_id
        elif routes_id != self.routes_id:
            raise RuntimeError(f"busmp actor: routes #{routes_id} were never received")
        rest = iter(buffers)
        self.payloads = {slot: (seq, payload, flags, [next(rest) for _ in range(count)])
                         for slot, seq, payload, flags, count in slots}
        self.ordered = ordered
        self.room, self.emitted = room, 0
        try:
            if kind == EVENTS:
                self.run_events(job, entries)
            else:
                self.run_batch(job, entries, key, route)
            while self.tasks:  # a parked job: its DONE comes when its last continuation ends
                self.run_loop(_FOR_ALL)
            return pickle.dumps(self.out, 5)
        finally:
            self.out, self.payloads = [], {}

    def followup_room(self) -> int:
        """``max_followups`` in an actor: the room the parent saw when it sent this call, less
        what the call has emitted. Calls of other actors, and the parent's count of what is
        still in flight, are not seen: the store may go past the cap by a call's worth or so,
        and once the parent sees it reached, every call it sends says there is no room."""
        return self.room - self.emitted

    def read_slot(self, slot: int, seq: int) -> tuple[Any, int, list[Any]]:
        got_seq, payload, flags, buffers = self.payloads[slot]
        if payload is None or got_seq != seq:
            raise CorruptSlot(f"slot {slot} (event #{seq}) could not be read by the parent")
        return payload, flags, buffers

    def overdue(self) -> Overdue | None:
        """Where the job stands if the call running now is past its deadline, else None.

        Read from another thread while the call runs. The words and records are taken while the
        deadline word stays the same (the same call still runs, so the job has not moved on); a
        follow-up the call emits after this is lost with the actor, as if it had died here."""
        words = self.progress[0]
        word = words[CALL_DEADLINE]
        if not word or split_deadline_word(word)[0] > time.monotonic_ns():
            return None
        pos, quiet = split_progress_word(words[CUR_POS])
        seen = (words[CUR_JOB], pos, words[CUR_CALL], quiet, word, list(self.out))
        return seen if words[CALL_DEADLINE] == word else None

    def put_result(self, kind: int, payload: bytes) -> None:
        """Keep a record for the call's result. A worker's PARKED is for its parent to feed it
        more; here a call ends with its job, so a parked job's count of quiet successes goes
        into its DONE instead."""
        if kind == PARKED:
            job, quiet = PARKED_REC.unpack(payload)
            self.parked_quiet[job] = quiet
            return
        if kind == DONE:
            job, quiet, rest = DONE_REC.unpack(payload)
            payload = DONE_REC.pack(job, quiet + self.parked_quiet.pop(job, 0), rest)
        self.out.append((kind, bytes(payload)))

    def notify_parent(self) -> None:
        return None  # the parent hears of everything when the call returns


class BusActor:
    """The Ray actor: one :class:`ActorWorker`; calls run one at a time, in the order sent."""

    def __init__(self, handler_timeout: float | None = None, niceness: int | None = None) -> None:
        self.worker = ActorWorker(handler_timeout)
        match_niceness(niceness)

    def pid(self) -> int:
        return os.getpid()

    def niceness(self) -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    def run(self, blob: bytes, *buffers: Any) -> bytes:
        return self.worker.run_call(blob, buffers)


def match_niceness(niceness: int | None) -> None:
    """Run at the store's process's ``niceness`` where Ray started this worker lower (Ray
    starts its workers at ``worker_niceness``, 15 by default): a local worker process runs at
    its parent's, and an actor at 15 gets next to no CPU on a machine where anything else runs.
    Raising a priority needs the right to (root, CAP_SYS_NICE, RLIMIT_NICE); without it the
    actor stays where Ray put it (the parent says so in its log)."""
    if niceness is None:
        return
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > niceness:
            os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except OSError:  # not allowed to raise it: stays
        pass


class TimedBusActor(BusActor):
    """With a ``handler_timeout``: ``overdue()`` runs in a thread of its own while a call runs."""

    @ray.method(concurrency_group="watch")
    def overdue(self) -> Overdue | None:
        return self.worker.overdue()


# The actor classes as Ray makes them; the processes are named after the classes (ray::BusActor).
_remote: Any = ray.remote  # Ray's stubs do not know all of its options (concurrency_groups)
REMOTE_ACTOR: Any = _remote(BusActor)
REMOTE_TIMED_ACTOR: Any = _remote(concurrency_groups={"watch": 1})(TimedBusActor)
