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
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import ray

from .._transport.ring import CorruptSlot
from .._transport.records import ASYNC, DONE, DONE_REC, EVENTS, PARKED, PARKED_REC, Entry
from .._workers.worker import _FOR_ALL, Worker

__all__ = ["BusActor", "ActorWorker", "Call", "CONTROL_WORDS"]

CONTROL_WORDS = 16  # room for the progress words a worker writes (see _transport.records)

#: What one call carries: (routes id, want outcomes, routes pickle or None when the actor has
#: them, follow-up room), (job id, kind, projection index, route index, entries, ordered), and per
#: slot of the job (slot, seq, payload or None when the parent could not read it, flags,
#: out-of-band buffers).
Call = tuple[tuple[int, bool, bytes | None, int], tuple[int, int, int, int, list[Entry], bool],
             list[tuple[int, int, Any, int, int]]]


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

    def __init__(self) -> None:  # no ring, channels or parent to watch: Ray does that
        self.start_running(_Progress())  # no statistics line: the parent writes the actor's
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

    def put_result(self, kind: int, payload: bytes) -> None:
        """Keep a record for the call's result. The call returns whole or not at all, so what
        a worker announces for its parent's crash accounting (ASYNC, PARKED) is not sent:
        a parked job's count of quiet successes goes into its DONE instead."""
        if kind == ASYNC:
            return
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


@ray.remote
class BusActor:
    """The Ray actor: one :class:`ActorWorker`; calls run one at a time, in the order sent."""

    def __init__(self) -> None:
        self.worker = ActorWorker()

    def pid(self) -> int:
        return os.getpid()

    def run(self, blob: bytes, *buffers: Any) -> bytes:
        return self.worker.run_call(blob, buffers)
