"""The slot ring: one shared-memory block of fixed-size slots that events are pickled into.

Layout of the block (all little-endian)::

    offset 0      header, a numpy structured array (``header_dtype()``), one 64-byte line per cursor
                    line 0   magic, version, slot_count, slot_size,
                             page_count, page_size                     (written once, at creation)
                    line 1   written    events encoded into slots      (parent)
                    line 2   dispatched events handed to an executor   (parent)
                    line 3   released   slots given back for reuse     (parent)
                    line 4   dropped    pending events discarded       (parent)
    offset 320    slot 0 | slot 1 | ... | slot N-1, each ``slot_size`` bytes:
                    0   seq     u64   the event's sequence number (0 = never written)
                    8   route   i64   hash of the projection, for batch grouping without decoding
                    16  length  u32   payload bytes
                    20  flags   u32   codec flags (cloudpickle, envelope, overflow)
                    32  payload       the pickle, the page that holds it, or its spill block's name
    then, 4096-aligned, the page arena: ``page_count`` pages of ``page_size`` bytes

Slots are handed out from a free list rather than strictly in ring order, so that back-pressure
can discard the oldest *pending* event while slots that workers still read stay untouched, and
so that a transaction can take exactly its own slots. The free list is a stack: the slot freed
last is written next, while its cache lines and pages are still warm, so a bus that keeps a
thousand events in flight touches a thousand slots, not the whole ring.

Who writes what. Every word above has exactly one writing process: the parent, under the
bus's lock (so threads of the parent are serialised too), through :class:`~busmp._transport.slots.Slots`,
the parent's allocator of slots and pages; the cursor words are its mirror of its counts
(``Slots.sync_header``), for readers in other processes. Workers only read slots, and only
slots that a job record in their own job channel names (see ``records``); each cursor of a
job or result channel likewise has one writer. No compare-and-swap is needed anywhere.

Why the ordering is safe on x86-64: the parent writes a slot's payload and header, *then*
the job record, *then* bumps the job ring's head word. x86-64 (TSO) never makes stores visible
out of program order and never reorders loads with older loads, so a worker that sees the new
head also sees the record and the slot. CPython issues these stores in program order: each is a
separate C call (memoryview assignment, ``struct.pack_into``, numpy item store), which a C
compiler cannot move across. A slot is reused only after its worker reported completion through
its result ring, which is ordered the same way in the other direction.

What an ARM (weakly ordered) build needs: a release store for each head/tail word and an acquire
load before reading what it guards (``stlr``/``ldar``, e.g. ``__atomic_store_n(p, v,
__ATOMIC_RELEASE)`` in a small C helper). Without it, busmp on non-x86 does not spin on these
words: readers look only after a kernel wake-up (a pipe write/read pair), and system calls are
full barriers. See ``SPIN_ALLOWED``.

Pages: where a chunk lives. ``subscribe_many`` packs a run of events into one pickle (a
*chunk*); the bigger the chunk, the less every event pays for its slot, its job entry and its
decoding. A chunk of 256 small events needs a few KiB, far more than a slot should have, so a
payload too big for its slot but not for a page takes a page from the arena (a free stack, parent
only, like the slots) and its slot holds ``(page, length)``. Only when every page is taken does a
payload spill into a block of its own; ``subscribe_many`` then cuts its chunks to slot size
rather than pay a block per chunk. The arena is a quarter of the slots' bytes (8 MiB by default),
and like the slots its pages are faulted in only as they are used.

Slot size trade-off: every slot costs ``slot_size`` bytes of shared memory whether the event
needs them or not (65 536 slots of 512 bytes = 32 MiB, faulted in as they are used), while an
event bigger than a slot pays for a block of its own (a ``shm_open`` + ``mmap``, some 20 µs). The
default suits events of up to a few hundred bytes; raise ``slot_size`` when most events are
larger, lower it for huge rings of tiny events.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from multiprocessing import shared_memory
from functools import cache
from typing import TYPE_CHECKING, Any

from . import shm as _shm
from .codec import FLAG_OVERFLOW, FLAG_PAGED
from .spill import SpillMaps, read_block

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "header_dtype", "SLOT_HEADER", "SLOT_HEADER_SIZE", "DEFAULT_SLOT_SIZE", "SPIN_ALLOWED",
    "PAGE_SIZE", "PAGE_REF", "SlotRing", "CorruptSlot", "arena_pages",
]

CACHE_LINE = 64
MAGIC = 0x62_75_73_6D_70_72_6E_67  # "busmprng"
VERSION = 2
CURSORS = ("written", "dispatched", "released", "dropped")

GEOMETRY = struct.Struct("<6Q")  # line 0: magic, version, slot_count, slot_size, page_count, page_size


@cache
def header_dtype() -> np.dtype[Any]:
    """The header as a numpy structured dtype. numpy is imported here, not with the module:
    a worker never looks at the header, and a spawned worker should not pay ~100 ms for numpy."""
    import numpy as np

    return np.dtype({
        "names": ["magic", "version", "slot_count", "slot_size", "page_count", "page_size", *CURSORS],
        "formats": ["<u8"] * (6 + len(CURSORS)),
        "offsets": [*range(0, GEOMETRY.size, 8), *(CACHE_LINE * (i + 1) for i in range(len(CURSORS)))],
        "itemsize": CACHE_LINE * (len(CURSORS) + 1),
    })


HEADER_SIZE = CACHE_LINE * (len(CURSORS) + 1)
# The cursors, each the first word of its own line, from line 1 on (see header_dtype).
_CURSOR_WORDS = struct.Struct("<" + "Q56x" * (len(CURSORS) - 1) + "Q")

SLOT_HEADER = struct.Struct("<QqII")  # seq, route, length, flags
SLOT_HEADER_SIZE = 32                 # the struct, padded so payloads start 32-byte aligned
MIN_SLOT_SIZE = SLOT_HEADER_SIZE + 64  # room for a spill block's name
DEFAULT_SLOT_SIZE = 512
PAGE_SIZE = 8192        # bytes per arena page: a chunk of 256 small events, with room to spare
PAGE_REF = struct.Struct("<II")  # what a paged slot holds: page number, payload length
ARENA_SHARE = 4         # the arena has a quarter of the slots' bytes...
MIN_PAGES = 4           # ...but at least this many pages (and never more pages than slots)
PAGE_ALIGN = 4096
MIB = 1 << 20


def _machine() -> str:
    """The CPU architecture, as ``platform.machine()`` says it (without importing ``platform``)."""
    if hasattr(os, "uname"):
        return os.uname().machine
    return os.environ.get("PROCESSOR_ARCHITECTURE", "")  # Windows


SPIN_ALLOWED = _machine().lower() in ("x86_64", "amd64", "i386", "i686")


def arena_pages(slot_count: int, slot_size: int) -> int:
    """Pages in the arena of a ring of ``slot_count`` slots of ``slot_size`` bytes."""
    return min(slot_count, max(MIN_PAGES, slot_count * slot_size // ARENA_SHARE // PAGE_SIZE))


def _arena_offset(slot_count: int, slot_size: int) -> int:
    end = HEADER_SIZE + slot_count * slot_size
    return -(-end // PAGE_ALIGN) * PAGE_ALIGN


class CorruptSlot(Exception):
    """A slot's header does not hold the event the reader expected."""


class SlotRing:
    """The shared-memory block: header, slots and page arena, as any process maps it.

    It only moves bytes: which slot or page is free is the parent's business
    (:class:`~busmp._transport.slots.Slots`). A reader maps the spill blocks that slots name
    as it meets them and keeps a few mapped (``SpillMaps``).
    """

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        buf: Any = shm.buf
        magic, _version, slot_count, slot_size, page_count, page_size = map(int, GEOMETRY.unpack_from(buf))
        self.slot_count, self.slot_size, self.page_count, self.page_size = slot_count, slot_size, page_count, page_size
        if magic != MAGIC:
            raise CorruptSlot(f"shared memory block {shm.name!r} is not a busmp slot ring")
        self._header: Any = None
        self.capacity = self.slot_size - SLOT_HEADER_SIZE
        self.arena_offset = _arena_offset(self.slot_count, self.slot_size)
        self._buf: Any = shm.buf
        self._maps = SpillMaps()

    # -- life cycle ---------------------------------------------------------------
    @classmethod
    def create(cls, slot_count: int, slot_size: int = DEFAULT_SLOT_SIZE, name: str | None = None) -> SlotRing:
        if slot_size < MIN_SLOT_SIZE:
            raise ValueError(f"slot_size must be at least {MIN_SLOT_SIZE} bytes, got {slot_size}")
        slot_size = -(-slot_size // 8) * 8  # keep every slot header 8-byte aligned
        pages = arena_pages(slot_count, slot_size)
        size = _arena_offset(slot_count, slot_size) + pages * PAGE_SIZE
        available = _shm.room(free=False)
        if available is not None and size > available:
            raise ValueError(
                f"a ring of {slot_count} slots x {slot_size} bytes, with its {pages * PAGE_SIZE / MIB:.0f} MiB "
                f"page arena, needs {size / MIB:.0f} MiB of shared "
                f"memory, but {_shm.SHM_DIR} holds only {available / MIB:.0f} MiB; lower buffer_size "
                "or slot_size, or give the machine more shared memory (docker: --shm-size)")
        shm = _shm.create_with_header(name or _shm.new_prefix() + "_ring", size,
                                      header_dtype(), magic=MAGIC, version=VERSION, slot_count=slot_count,
                                      slot_size=slot_size, page_count=pages, page_size=PAGE_SIZE)
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> SlotRing:
        return cls(_shm.attach(name), owner=False)

    def close(self) -> None:
        """Release this process's mapping (and its mapped spill blocks); the owner also unlinks."""
        self._maps.close()
        self._header = None
        self._buf = None
        _shm.release(self._shm, unlink=self.owner)

    @property
    def header(self) -> Any:
        """The header as a numpy structured array (made on first use; None once closed)."""
        if self._header is None and self._buf is not None:
            import numpy as np

            self._header = np.ndarray((), dtype=header_dtype(), buffer=self._shm.buf)
        return self._header

    def write_cursors(self, counts: Sequence[int]) -> None:
        """Store the cursor words (``CURSORS`` order) as plain words, the bytes the numpy
        header shows: a numpy item store costs microseconds, and a one-event publish does this."""
        if self._buf is not None:
            _CURSOR_WORDS.pack_into(self._buf, CACHE_LINE, *counts)

    # -- slots --------------------------------------------------------------------
    def slot_offset(self, slot: int) -> int:
        return HEADER_SIZE + slot * self.slot_size

    def put(self, slot: int, seq: int, route: int, body: bytes, flags: int) -> None:
        """Write a slot's header and body: the pickle itself, or (``FLAG_PAGED`` /
        ``FLAG_OVERFLOW``) the reference to where it lies; the body fits the slot."""
        off = self.slot_offset(slot)
        self._buf[off + SLOT_HEADER_SIZE: off + SLOT_HEADER_SIZE + len(body)] = body
        SLOT_HEADER.pack_into(self._buf, off, seq, route, len(body), flags)

    def put_page(self, page: int, payload: bytes) -> bytes:
        """Write ``payload`` into arena page ``page``; returns the slot body that refers to it."""
        start = self.arena_offset + page * self.page_size
        self._buf[start: start + len(payload)] = payload
        return PAGE_REF.pack(page, len(payload))

    def read(self, slot: int, seq: int | None = None, own_block: Any = None) -> tuple[Any, int, list[bytearray]]:
        """The payload, flags and out-of-band buffers of ``slot``; checks ``seq`` when given.

        A spilled event's buffers are copied out of shared memory, so what a handler keeps
        stays valid after the block is reused. ``own_block(slot, name)``, if given, returns
        the writer's own mapping of a spill block (so the parent maps nothing twice).
        """
        off = self.slot_offset(slot)
        got_seq, _route, length, flags = SLOT_HEADER.unpack_from(self._buf, off)
        if seq is not None and got_seq != seq:
            raise CorruptSlot(f"slot {slot} holds event #{got_seq}, expected #{seq}")
        if length > self.capacity:
            raise CorruptSlot(f"slot {slot} claims {length} payload bytes, more than its {self.capacity}")
        start = off + SLOT_HEADER_SIZE
        payload = self._buf[start: start + length]
        if flags & FLAG_PAGED:
            return self._paged_payload(slot, payload), flags & ~FLAG_PAGED, []
        if flags & FLAG_OVERFLOW:
            name = bytes(payload).decode()
            view = own_block(slot, name) if own_block is not None else None
            body, buffers = read_block(view if view is not None else self._maps.view(name))
            return body, flags & ~FLAG_OVERFLOW, buffers
        return payload, flags, []

    def seq_of(self, slot: int) -> int:
        return self.seq_and_route(slot)[0]

    def seq_and_route(self, slot: int) -> tuple[int, int]:
        seq, route, _, _ = SLOT_HEADER.unpack_from(self._buf, self.slot_offset(slot))
        return seq, route

    def routes(self, slots: np.ndarray) -> np.ndarray:
        """The route words of ``slots``, read in one vectorised gather."""
        return self._column(8, "<i8", slots)

    def seqs(self, slots: np.ndarray) -> np.ndarray:
        """The sequence numbers of ``slots``, read in one vectorised gather."""
        return self._column(0, "<u8", slots).astype("<i8")

    def _column(self, offset: int, dtype: str, slots: np.ndarray) -> np.ndarray:
        import numpy as np  # the parent's planner only (see header_dtype)

        words = np.ndarray((self.slot_count,), dtype=dtype, buffer=self._buf,
                           offset=HEADER_SIZE + offset, strides=(self.slot_size,))
        gathered: np.ndarray = words[slots]
        return gathered

    @property
    def chunk_capacity(self) -> int:
        """The most bytes a chunk should take: a page, or a slot when there are no pages."""
        return self.page_size if self.page_count else self.capacity

    def _paged_payload(self, slot: int, ref: Any) -> Any:
        if len(ref) != PAGE_REF.size:
            raise CorruptSlot(f"slot {slot} is marked paged but holds {len(ref)} bytes, not a page reference")
        page, length = PAGE_REF.unpack(ref)
        if page >= self.page_count or length > self.page_size:
            raise CorruptSlot(f"slot {slot} points at page {page} ({length} bytes); the arena has "
                              f"{self.page_count} pages of {self.page_size}")
        start = self.arena_offset + page * self.page_size
        return self._buf[start: start + length]
