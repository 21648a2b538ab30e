"""The parent's allocator of the ring: which slots and pages are free, pending or handed off.

Only the process that owns the ring keeps this, and only under the bus's lock: the free stack
of slots, the pending list, each slot's live events (a chunk may have lost its front to
``DROP_OLDEST``), the free stack of arena pages, the spill blocks of slots too big for a page,
and the counts that :meth:`Slots.sync_header` mirrors into the ring's cursor words.

Writing a slot is the one place that decides where an encoded event goes: into the slot, into
an arena page, or into a spill block of its own (see ``ring``). A write that fails (no room in
``/dev/shm``, no file descriptor left) leaves the slot and the allocator as they were, so the
caller gives the slot back and the event is refused whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

from .._errors import BufferFull
from . import shm as _shm
from .codec import FLAG_OVERFLOW, FLAG_PAGED
from .ring import CURSORS, MIB, SlotRing
from .spill import SpillPool, block_size, write_block

__all__ = ["Slots"]


class Slots:
    """Free and pending slots, arena pages and spill blocks of one ring (parent only).

    Room is counted in events, as the contract's ``buffer_size`` is: a slot holds one event,
    or a chunk of several from ``subscribe_many``. Every held slot holds at least one live
    event, so with room for an event there is always a free slot too.
    """

    def __init__(self, ring: SlotRing) -> None:
        self.ring = ring
        self.slot_count = ring.slot_count
        self.capacity = ring.capacity
        self.page_size = ring.page_size
        self.page_count = ring.page_count
        # The free list is a stack: the slot freed last is written next, while its cache lines
        # and pages are still warm, so a bus that keeps a thousand events in flight touches a
        # thousand slots, not the whole ring.
        self.free: deque[int] = deque(range(ring.slot_count - 1, -1, -1))
        self.pending: deque[int] = deque()
        self.live = [0] * ring.slot_count    # events each slot still holds
        self.first = [0] * ring.slot_count   # a chunk's first live event
        # Sync mode keeps a slot's events as the objects themselves (nobody else reads them).
        self.objects: list[Any] = [None] * ring.slot_count
        # What each written slot's header says (its sequence number and route word), kept here
        # too: a one-event publish plans from these instead of reading the header back.
        self.seq_of = [0] * ring.slot_count
        self.route_of = [0] * ring.slot_count
        self.free_events = ring.slot_count
        self.free_pages: list[int] = list(range(ring.page_count - 1, -1, -1))
        self.counts = dict.fromkeys(CURSORS, 0)
        self.closed_events = 0  # pending events a closing store took (they became dead letters)
        self._paged: dict[int, int] = {}                              # slot -> its arena page
        self._overflow: dict[int, shared_memory.SharedMemory] = {}    # slot -> its spill block
        self._pool = SpillPool(ring.name)

    @property
    def name(self) -> str:
        return self.ring.name

    def close(self) -> None:
        """Unlink every spill block, then the ring."""
        for block in self._overflow.values():
            _shm.release(block, unlink=True)
        self._overflow.clear()
        self._pool.close()
        self.ring.close()

    def sync_header(self) -> None:
        """Mirror the counts into the ring's cursor words (once per batch, not per event; a sync
        store's one-event publishes leave it to their next stats tick, see ``Bus.publish_inline``)."""
        self.ring.write_cursors(list(self.counts.values()))

    # -- where a payload goes -------------------------------------------------------
    @property
    def chunk_capacity(self) -> int:
        return self.ring.chunk_capacity

    def pages_for(self, payload: bytes, buffers: Sequence[memoryview]) -> bool:
        """Whether a payload too big for a slot would get a page now."""
        return not buffers and len(payload) <= self.page_size and bool(self.free_pages)

    def would_spill(self, payload: bytes, buffers: Sequence[memoryview]) -> bool:
        """Whether writing this payload now would cost a spill block of its own."""
        return bool(buffers or len(payload) > self.capacity) and not self.pages_for(payload, buffers)

    def check_spill_room(self, encoded: Sequence[tuple[bytes, Sequence[memoryview]]]) -> None:
        """Raise ``BufferFull`` if these payloads (with their buffers), written in turn, would
        need new spill blocks that shared memory has no room for; called before anything is
        taken, so a refused event changes nothing."""
        pages, needed = len(self.free_pages), 0
        for payload, buffers in encoded:
            if not buffers and len(payload) <= self.capacity:
                continue
            if not buffers and len(payload) <= self.page_size and pages:
                pages -= 1
                continue
            size = block_size([payload, *buffers])
            if not self._pool.has(size):
                needed += size
        available = _shm.room(free=True) if needed else None
        if available is not None and needed > available:
            raise BufferFull(
                f"the event needs a {needed / MIB:.1f} MiB shared-memory block but {_shm.SHM_DIR} has only "
                f"{available / MIB:.1f} MiB free; send smaller events, publish and flush to free "
                "blocks, or give the machine more shared memory (docker: --shm-size)")

    def write(self, slot: int, seq: int, route: int, payload: bytes, flags: int,
              buffers: Sequence[memoryview] = ()) -> None:
        """Put an encoded event (and its out-of-band buffers) into ``slot``: in the slot, in a
        page, or in a spill block. Raises ``BufferFull`` (naming the fix) when shared memory
        or file descriptors run out; the slot then holds nothing new."""
        if buffers or len(payload) > self.capacity:
            self._drop_extra(slot)
            if self.pages_for(payload, buffers):
                page = self.free_pages.pop()
                self._paged[slot] = page
                payload, flags = self.ring.put_page(page, payload), flags | FLAG_PAGED
            else:
                payload, flags = self._spill(slot, payload, buffers), flags | FLAG_OVERFLOW
        self.ring.put(slot, seq, route, payload, flags)
        self.seq_of[slot] = seq
        self.route_of[slot] = route

    def _spill(self, slot: int, payload: bytes, buffers: Sequence[memoryview]) -> bytes:
        pieces = [payload, *buffers]
        try:
            block = self._pool.take(block_size(pieces))
        except OSError as exc:
            raise BufferFull(
                f"no shared-memory block could be made for an event of {block_size(pieces)} bytes "
                f"({type(exc).__name__}: {exc}); raise the open-files limit (ulimit -n), publish and "
                "flush so that blocks are reused, or raise slot_size so that events fit a slot") from exc
        write_block(block.buf, pieces)
        self._overflow[slot] = block
        return block.name.encode()

    def read(self, slot: int, seq: int | None = None) -> tuple[Any, int, list[bytearray]]:
        """What ``slot`` holds, read back in the parent (for hooks and dead letters)."""
        return self.ring.read(slot, seq, self._own_block)

    def _own_block(self, slot: int, name: str) -> Any:
        owned = self._overflow.get(slot)
        return owned.buf if owned is not None and owned.name == name else None

    def _drop_extra(self, slot: int) -> None:
        """Give back the page or spill block that ``slot`` used, if any."""
        page = self._paged.pop(slot, None)
        if page is not None:
            self.free_pages.append(page)
        block = self._overflow.pop(slot, None)
        if block is not None:
            self._pool.give(block)

    # -- slots ----------------------------------------------------------------------
    def take(self, events: int) -> int:
        """A free slot for ``events`` events; the caller has made room for them."""
        slot = self.free.pop()
        self.live[slot] = events
        self.first[slot] = 0
        self.free_events -= events
        return slot

    def untake(self, slot: int) -> None:
        """Give back a slot taken for a write that failed: as if never taken."""
        self.free_events += self.live[slot]
        self.live[slot] = 0
        self.objects[slot] = None
        self._drop_extra(slot)
        self.free.append(slot)

    def release(self, slots: list[int]) -> int:
        """Give slots back once nobody will read them again; returns the events they held."""
        events = 0
        for slot in slots:
            events += self.live[slot]
            self.live[slot] = 0
            self.objects[slot] = None
            if slot in self._paged or slot in self._overflow:
                self._drop_extra(slot)
        self.free.extend(slots)
        self.free_events += events
        self.counts["released"] += events
        return events

    def drop_oldest_pending(self) -> bool:
        """Discard the oldest pending event (the first live one of the oldest pending slot)."""
        if not self.pending:
            return False
        slot = self.pending[0]
        self.first[slot] += 1
        self.live[slot] -= 1
        self.free_events += 1
        self.counts["dropped"] += 1
        if self.live[slot] == 0:
            self.pending.popleft()
            self.objects[slot] = None
            self._drop_extra(slot)
            self.free.append(slot)
        return True

    def take_pending(self) -> list[int]:
        taken = list(self.pending)
        self.pending.clear()
        return taken

    @property
    def pending_events(self) -> int:
        """Events in pending slots, from the counts (no walk over the pending list): every
        event written is pending until it is dispatched, dropped, or taken by a closing store."""
        counts = self.counts
        return counts["written"] - counts["dispatched"] - counts["dropped"] - self.closed_events

    def live_events(self, slots: Sequence[int]) -> int:
        return sum(self.live[slot] for slot in slots)
