"""The records parent and workers exchange over their channels (see ``_channel``).

Job channel, parent -> worker:

    ROUTES  want_outcomes u8 | cloudpickle(Routes)
    EVENTS  job u64, count u32            | count x (slot, seq, start, stop) i64: run per-event
            handlers on events start..stop-1 of each slot (a slot holds one event or a chunk)
    BATCH   job u64, count u32, key u32, route u32 | entries: one batch call, projection #key
    STOP    (empty): finish what is queued (and every handler still awaiting), then exit
    | ORDERED   a flag on EVENTS and BATCH: the job is a group that keeps its order (a
            transaction): a handler's awaitable is awaited before the next call, not overlapped
    | LANE  a flag on EVENTS: a *lane job*, a small publish written straight to an awake worker
            (see ``pool``). It sends no DONE: the worker counts it done in LANE_DONE, in the
            order the jobs came, and notifies the parent only when the parent waits for
            progress (WANT_PROGRESS), when the job sent records, or before the worker sleeps.
            Its awaitables are awaited in place, as ORDERED's are, so it never parks

Result channel, worker -> parent:

    OUTCOME job u64, pos u32, name length u16, failed u8, call u16 | handler name | pickle((Result | None,
            exception | None)): call number ``call`` of event ``pos`` (WHOLE_EVENT: the event as a
            whole, which could not be decoded). Always for a failure; for successes only when the
            parent has hooks. The parent counts these; DONE counts the rest
    FOLLOWUP    flags u32 | an encoded event (``_codec``), from ``ctx.emit``
    DONE    job u64, quiet i64, 0 i64: the job is finished, its slots may be reused; ``quiet``
            counts its successful calls that had no OUTCOME
    ASYNC   job u64, pos u32, call u16: call number ``call`` of event ``pos`` returned an
            awaitable; that call and the event's later ones now run on the worker's event loop
            and report every outcome (the parent counts them). Sent before the progress words
            move past the event, so that a crash charges exactly its calls not reported
    PARKED  job u64, quiet i64: the job's events were all run up to their awaiting calls (the
            quiet successes so far are counted here); its slots stay taken until its DONE, which
            follows when the last of them has finished, but it no longer counts as work queued
            at the worker, which is fed further jobs meanwhile

Control words of a worker's *job* channel, all written by the worker: the job in progress and
how far it got, so that the parent can tell, after a crash, exactly which (event, handler) calls
died with it: CUR_POS packs how many events are done with how many of their calls succeeded
without an OUTCOME (``progress_word``: one store for both, so that a worker killed between two
stores never leaves a count that includes the calls of an event its position says is not done);
of the event after them, the calls CUR_CALL says (when it names that event). With a
handler_timeout, CALL_DEADLINE holds the deadline of the call running now (0 between calls),
for the parent to kill a worker whose call is overdue.

Two more, on the job channel's second control line, also the worker's: LANE_DONE packs how many
lane jobs it finished (low ``LANE_BITS`` bits, modulo) with the successful calls of those jobs
that had no OUTCOME (the rest), one store for both, so that the parent never reads a count of
jobs without their calls or the other way round; SLEEP is odd while the worker sleeps (or is
about to) on its doorbell and is bumped each time it does, so the parent rings a doorbell only
for a sleeping worker, once per sleep.

A third on the result channel, the parent's: WANT_PROGRESS is nonzero while a thread of the
parent waits for events to finish (``flush()``, room under BLOCK): the worker then notifies
after every lane job instead of only before it sleeps.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence

__all__ = [
    "ROUTES", "EVENTS", "BATCH", "STOP", "ORDERED", "OUTCOME", "FOLLOWUP", "DONE", "ASYNC", "PARKED",
    "ROUTES_HEAD", "JOB_HEAD", "BATCH_HEAD", "OUTCOME_HEAD", "FOLLOWUP_HEAD", "DONE_REC", "ASYNC_REC", "PARKED_REC",
    "CUR_JOB", "CUR_POS", "PID", "HANDLED", "CUR_CALL", "WHOLE_EVENT", "progress_word", "split_progress_word",
    "call_word", "split_call_word", "FOLLOWUP_ROOM", "FOLLOWUPS_TAKEN", "CALL_DEADLINE", "deadline_word",
    "split_deadline_word", "LANE", "LANE_DONE", "SLEEP", "WANT_PROGRESS", "LANE_BITS", "LANE_MASK", "lane_word",
    "split_lane_word",
    "Entry", "ONE_ENTRY_JOB", "pack_entries", "unpack_entries",
]

ROUTES, EVENTS, BATCH, STOP = 1, 2, 3, 4
ORDERED = 1 << 8  # flag on a job kind (see above)
LANE = 1 << 9     # flag on an EVENTS job (see above)
OUTCOME, FOLLOWUP, DONE, ASYNC, PARKED = 11, 12, 13, 14, 15

ROUTES_HEAD = struct.Struct("<B")
JOB_HEAD = struct.Struct("<QI")
BATCH_HEAD = struct.Struct("<QIII")
OUTCOME_HEAD = struct.Struct("<QIHBH")
FOLLOWUP_HEAD = struct.Struct("<I")
DONE_REC = struct.Struct("<Qqq")
ASYNC_REC = struct.Struct("<QIH")
PARKED_REC = struct.Struct("<Qq")

# Control words (indices into the job channel's spare line).
CUR_JOB, CUR_POS, PID, HANDLED, CUR_CALL, CALL_DEADLINE = 0, 1, 4, 5, 6, 7  # 2 and 3 are spare
# Control words of a worker's *result* channel, written by the parent (the worker only reads
# them, in ctx.emit): how many follow-ups the store takes now (max_followups), and how many
# FOLLOWUP records of this worker the parent has read (the rest are in transit).
FOLLOWUP_ROOM, FOLLOWUPS_TAKEN, WANT_PROGRESS = range(3)
# The job channel's second line of control words (the worker's; see above).
LANE_DONE, SLEEP = 8, 9
LANE_BITS = 20  # lane jobs counted modulo 2**20: far more than a channel ever holds at once
LANE_MASK = (1 << LANE_BITS) - 1

WHOLE_EVENT = 0xFFFF  # an OUTCOME's call number when it stands for every call of its event
CALL_BITS = 16


def progress_word(pos: int, quiet: int) -> int:
    """CUR_POS: ``pos`` events of the job are done, and ``quiet`` of their calls succeeded
    without an OUTCOME (a job holds far fewer than 2**32 events)."""
    return (quiet << 32) | pos


def split_progress_word(word: int) -> tuple[int, int]:
    return word & 0xFFFF_FFFF, word >> 32


def call_word(pos: int, calls: int) -> int:
    """CUR_CALL: ``calls`` handlers of event ``pos`` are done. One word, so that the parent
    never pairs a position with another event's count."""
    return (pos << CALL_BITS) | calls


def split_call_word(word: int) -> tuple[int, int]:
    return word >> CALL_BITS, word & ((1 << CALL_BITS) - 1)


def deadline_word(limit_ns: int, ctx_deadline: float | None) -> int:
    """CALL_DEADLINE for a call starting now: ``time.monotonic_ns()`` (one clock for every
    process of the machine) when it must be done, odd when the context's deadline came first,
    even when the handler_timeout did; never 0 (0: no call runs)."""
    now = time.monotonic_ns()
    deadline, from_ctx = now + limit_ns, 0
    if ctx_deadline is not None:
        ctx_ns = now + int((ctx_deadline - time.time()) * 1e9)
        if ctx_ns < deadline:
            deadline, from_ctx = ctx_ns, 1
    return max(2, deadline & ~1) | from_ctx


def split_deadline_word(word: int) -> tuple[int, bool]:
    """The deadline in ``time.monotonic_ns()`` and whether it was the context's."""
    return word & ~1, bool(word & 1)


def lane_word(done: int, quiet: int) -> int:
    """LANE_DONE: ``done`` lane jobs finished, ``quiet`` successful calls without an OUTCOME."""
    return (quiet << LANE_BITS) | (done & LANE_MASK)


def split_lane_word(word: int) -> tuple[int, int]:
    """(lane jobs finished modulo 2**LANE_BITS, quiet calls of all of them)."""
    return word & LANE_MASK, word >> LANE_BITS




ENTRY = struct.Struct("<4q")  # slot, seq (of the slot's first event), start, stop
ONE_ENTRY_JOB = struct.Struct("<QI4q")  # JOB_HEAD and one ENTRY, packed at once (a lane job's usual shape)
Entry = tuple[int, int, int, int]


def pack_entries(entries: Sequence[Entry]) -> bytes:
    return b"".join([ENTRY.pack(*entry) for entry in entries])


def unpack_entries(data: bytes | memoryview, offset: int) -> list[Entry]:
    return list(ENTRY.iter_unpack(memoryview(data)[offset:]))
