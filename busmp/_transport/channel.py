"""A single-producer, single-consumer ring of variable-length records in shared memory.

Each worker has two: a *job* channel (the parent writes, the worker reads) and a *result*
channel (the worker writes, the parent reads). Layout::

    line 0   magic, capacity                  (written once, at creation)
    line 1   head   bytes ever written        (the producer only)
    line 2   tail   bytes ever consumed       (the consumer only)
    line 3-4 control words for the owner's use (``CONTROL_WORDS`` of them; one writer each)
    offset 320: data, ``capacity`` bytes

A record is an 8-byte header ``(length u32, kind u32)`` and its payload, padded to 8 bytes.
A record that would straddle the end of the data area is preceded by a wrap marker; a payload
bigger than half the capacity is cut into fragments (``MORE`` set on all but the last) that
the reader joins, so no size is ever refused. The producer writes the record, *then* advances
``head``; the consumer reads it, *then* advances ``tail``: with one writer per word, the
ordering argument of ``_ring`` applies unchanged.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

from . import shm as _shm

__all__ = ["Channel", "MORE", "ChannelClosed", "CONTROL_WORDS"]

CACHE_LINE = 64
MAGIC = 0x62_75_73_6D_70_63_68_6E  # "busmpchn"
CONTROL_WORDS = 2 * CACHE_LINE // 8
DATA = 5 * CACHE_LINE
MAGIC_WORD, CAPACITY_WORD = 0, 1
HEAD_WORD, TAIL_WORD, CONTROL_WORD = CACHE_LINE // 8, 2 * CACHE_LINE // 8, 3 * CACHE_LINE // 8
RECORD = struct.Struct("<II")
WRAP = 0xFFFF_FFFF
MORE = 1 << 31  # kind flag: a fragment, more follow


class ChannelClosed(Exception):
    """The other side is gone while this side waited for it."""


def _padded(n: int) -> int:
    return (n + 7) & ~7


class Channel:
    """One end of an SPSC record ring. Which end a process uses is up to the caller."""

    def __init__(self, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self._shm = shm
        self.owner = owner
        self.name = shm.name
        self._buf: Any = shm.buf
        self._words: Any = shm.buf[:DATA].cast("q")  # type: ignore[index]
        if self._words[MAGIC_WORD] != MAGIC:
            self._words.release()
            raise ValueError(f"shared memory block {shm.name!r} is not a busmp channel")
        self.capacity = int(self._words[CAPACITY_WORD])
        self._partial: list[bytes] = []

    @classmethod
    def create(cls, name: str, capacity: int) -> Channel:
        capacity = _padded(max(capacity, 4096))
        shm = _shm.create(name, DATA + capacity)
        words = shm.buf[:DATA].cast("q")  # type: ignore[index]
        words[MAGIC_WORD], words[CAPACITY_WORD] = MAGIC, capacity
        words.release()
        return cls(shm, owner=True)

    @classmethod
    def attach(cls, name: str) -> Channel:
        return cls(_shm.attach(name), owner=False)

    def close(self) -> None:
        self._words.release()
        self._buf = None
        _shm.release(self._shm, unlink=self.owner)

    def reset(self) -> None:
        """Empty the channel. Only while neither end is in use (a dead worker's channels)."""
        self._words[HEAD_WORD] = 0
        self._words[TAIL_WORD] = 0
        for i in range(CONTROL_WORDS):
            self._words[CONTROL_WORD + i] = 0
        self._partial.clear()

    # -- control words: small counters beside the cursors ------------------------
    def control(self, i: int) -> int:
        return int(self._words[CONTROL_WORD + i])

    def set_control(self, i: int, value: int) -> None:
        self._words[CONTROL_WORD + i] = value

    def control_words(self) -> tuple[Any, int]:
        """The raw word view and the index of control word 0, for stores on a hot path."""
        return self._words, CONTROL_WORD

    # -- producer -----------------------------------------------------------------
    def put(self, kind: int, payload: bytes | memoryview, wait: Callable[[], None] | None = None) -> None:
        """Append one record; ``wait()`` is called while the ring is full (it may raise)."""
        limit = self.capacity // 2 - RECORD.size
        view = memoryview(payload)
        while len(view) > limit:
            self._put_one(kind | MORE, view[:limit], wait)
            view = view[limit:]
        self._put_one(kind, view, wait)

    def _put_one(self, kind: int, payload: memoryview, wait: Callable[[], None] | None) -> None:
        words, cap = self._words, self.capacity
        need = RECORD.size + _padded(len(payload))
        head = words[HEAD_WORD]
        offset = head % cap
        pad = cap - offset if cap - offset < need else 0
        while cap - (head - words[TAIL_WORD]) < need + pad:
            if wait is None:
                time.sleep(0.0002)
            else:
                wait()
        if pad:
            if pad >= RECORD.size:
                RECORD.pack_into(self._buf, DATA + offset, WRAP, 0)
            head += pad
            offset = 0
        start = DATA + offset
        RECORD.pack_into(self._buf, start, len(payload), kind)
        self._buf[start + RECORD.size: start + RECORD.size + len(payload)] = payload
        words[HEAD_WORD] = head + need  # publish: after the record is complete

    # -- consumer -----------------------------------------------------------------
    def has_data(self) -> bool:
        return bool(self._words[HEAD_WORD] != self._words[TAIL_WORD])

    def get(self) -> tuple[int, bytes] | None:
        """The next whole record ``(kind, payload)``, or ``None`` if none is complete yet."""
        while True:
            piece = self._get_one()
            if piece is None:
                return None
            kind, payload = piece
            if kind & MORE:
                self._partial.append(payload)
                continue
            if self._partial:
                self._partial.append(payload)
                payload = b"".join(self._partial)
                self._partial.clear()
            return kind, payload

    def _get_one(self) -> tuple[int, bytes] | None:
        words, cap = self._words, self.capacity
        tail = words[TAIL_WORD]
        while True:
            if tail == words[HEAD_WORD]:
                return None
            offset = tail % cap
            if cap - offset < RECORD.size:
                tail += cap - offset
                continue
            length, kind = RECORD.unpack_from(self._buf, DATA + offset)
            if length == WRAP:
                tail += cap - offset
                words[TAIL_WORD] = tail
                continue
            start = DATA + offset + RECORD.size
            payload = bytes(self._buf[start: start + length])
            words[TAIL_WORD] = tail + RECORD.size + _padded(length)  # release: after the copy
            return kind, payload
