"""The records parent and workers exchange over their channels (see ``_channel``).

Job channel, parent -> worker:

    ROUTES  want_outcomes u8 | cloudpickle(Routes)
    EVENTS  job u64, count u32            | count x (slot, seq, start, stop) i64: run per-event
            handlers on events start..stop-1 of each slot (a slot holds one event or a chunk)
    BATCH   job u64, count u32, key u32, route u32 | entries: one batch call, projection #key
    STOP    (empty): finish what is queued, then exit

Result channel, worker -> parent:

    OUTCOME job u64, pos u32, name length u16, failed u8, call u16 | handler name | pickle((Result | None,
            exception | None)): call number ``call`` of event ``pos`` (WHOLE_EVENT: the event as a
            whole, which could not be decoded). Always for a failure; for successes only when the
            parent has hooks. The parent counts these; DONE counts the rest
    FOLLOWUP    flags u32 | an encoded event (``_codec``), from ``ctx.emit``
    DONE    job u64, quiet i64, 0 i64: the job is finished, its slots may be reused; ``quiet``
            counts its successful calls that had no OUTCOME

Control words of a worker's *job* channel, all written by the worker: the job in progress and
how far it got, so that the parent can tell, after a crash, exactly which (event, handler) calls
died with it: CUR_POS events are done; of event CUR_POS, the calls CUR_CALL says (when it names
that event); CUR_PROCESSED counts the done events' calls that had no OUTCOME.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = [
    "ROUTES", "EVENTS", "BATCH", "STOP", "OUTCOME", "FOLLOWUP", "DONE",
    "ROUTES_HEAD", "JOB_HEAD", "BATCH_HEAD", "OUTCOME_HEAD", "FOLLOWUP_HEAD", "DONE_REC",
    "CUR_JOB", "CUR_POS", "CUR_PROCESSED", "CUR_ERRORS", "PID", "HANDLED", "CUR_CALL", "WHOLE_EVENT",
    "call_word", "split_call_word",
    "Entry", "pack_entries", "unpack_entries",
]

ROUTES, EVENTS, BATCH, STOP = 1, 2, 3, 4
OUTCOME, FOLLOWUP, DONE = 11, 12, 13

ROUTES_HEAD = struct.Struct("<B")
JOB_HEAD = struct.Struct("<QI")
BATCH_HEAD = struct.Struct("<QIII")
OUTCOME_HEAD = struct.Struct("<QIHBH")
FOLLOWUP_HEAD = struct.Struct("<I")
DONE_REC = struct.Struct("<Qqq")

# Control words (indices into the job channel's spare line).
CUR_JOB, CUR_POS, CUR_PROCESSED, CUR_ERRORS, PID, HANDLED, CUR_CALL = range(7)
WHOLE_EVENT = 0xFFFF  # an OUTCOME's call number when it stands for every call of its event
CALL_BITS = 16


def call_word(pos: int, calls: int) -> int:
    """CUR_CALL: ``calls`` handlers of event ``pos`` are done. One word, so that the parent
    never pairs a position with another event's count."""
    return (pos << CALL_BITS) | calls


def split_call_word(word: int) -> tuple[int, int]:
    return word >> CALL_BITS, word & ((1 << CALL_BITS) - 1)




ENTRY = struct.Struct("<4q")  # slot, seq (of the slot's first event), start, stop
Entry = tuple[int, int, int, int]


def pack_entries(entries: Sequence[Entry]) -> bytes:
    return b"".join([ENTRY.pack(*entry) for entry in entries])


def unpack_entries(data: bytes | memoryview, offset: int) -> list[Entry]:
    return list(ENTRY.iter_unpack(memoryview(data)[offset:]))
