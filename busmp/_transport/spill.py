"""Spill blocks: shared memory for events too big for a ring slot.

A spilled event's slot holds the name of its block; the block holds a header with the lengths
of the pickle and of each out-of-band buffer, then those pieces, each 64-byte aligned. Creating a
block is cheap but *touching* fresh shared memory is not (every new page is allocated and
zeroed by the kernel: about 1 ms per MiB on a small VM), so the parent keeps released blocks
in a :class:`SpillPool` and reuses them, up to ``keep_bytes``. Readers in other processes map
blocks by name and keep a few mapped (:class:`SpillMaps`), so a reused block costs them no
system call either.
"""

from __future__ import annotations

import secrets
import struct
from collections import OrderedDict
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

from . import shm as _shm

__all__ = ["SpillPool", "SpillMaps", "block_size", "write_block", "read_block", "KEEP_BYTES"]

MIN_BLOCK = 64 * 1024
KEEP_BYTES = 256 << 20   # released blocks the parent keeps for reuse; mappings a reader keeps
ALIGN = 64


def layout(lengths: Sequence[int]) -> tuple[list[int], int]:
    """Offsets of pieces of ``lengths`` bytes, each 64-byte aligned, and the total size."""
    offsets, end = [], 0
    for n in lengths:
        offsets.append(end)
        end += (n + ALIGN - 1) // ALIGN * ALIGN
    return offsets, end


def _header(lengths: Sequence[int]) -> bytes:
    return struct.pack(f"<I{len(lengths)}Q", len(lengths), *lengths)


def block_size(pieces: Sequence[Any]) -> int:
    """Bytes a block needs for ``pieces`` (a pickle, then its out-of-band buffers)."""
    lengths = [memoryview(piece).nbytes for piece in pieces]
    return layout([len(_header(lengths)), *lengths])[1]


def write_block(view: Any, pieces: Sequence[Any]) -> None:
    """Lay ``pieces`` out in a block: a header of their lengths, then each piece."""
    lengths = [memoryview(piece).nbytes for piece in pieces]
    header = _header(lengths)
    offsets, _ = layout([len(header), *lengths])
    view[: len(header)] = header
    for piece, offset, n in zip(pieces, offsets[1:], lengths):
        view[offset: offset + n] = memoryview(piece).cast("B")


def read_block(view: Any) -> tuple[bytes, list[bytearray]]:
    """The pickle and (copied) buffers that :func:`write_block` laid out."""
    (count,) = struct.unpack_from("<I", view)
    lengths = list(struct.unpack_from(f"<{count}Q", view, 4))
    offsets, _ = layout([4 + 8 * count, *lengths])
    payload = bytes(view[offsets[1]: offsets[1] + lengths[0]])
    return payload, [bytearray(view[o: o + n]) for o, n in zip(offsets[2:], lengths[1:])]


def _size_class(n: int) -> int:
    """``n`` rounded up to one of eight steps per power of two (at most 12.5 % slack)."""
    if n <= MIN_BLOCK:
        return MIN_BLOCK
    # n - 1 has b bits, so n > 2**(b-1): a step of 2**(b-4) is an eighth of that at most.
    step = 1 << max((n - 1).bit_length() - 4, 0)
    return (n + step - 1) // step * step


class SpillPool:
    """The parent's spill blocks: handed out by size class, taken back for reuse."""

    def __init__(self, prefix: str, keep_bytes: int = KEEP_BYTES) -> None:
        self._prefix = prefix
        self._keep_bytes = keep_bytes
        self._kept: dict[int, list[shared_memory.SharedMemory]] = {}
        self._kept_bytes = 0

    def has(self, size: int) -> bool:
        """Whether a kept block would serve ``size`` bytes (no new shared memory needed)."""
        return bool(self._kept.get(_size_class(size)))

    def take(self, size: int) -> shared_memory.SharedMemory:
        size_class = _size_class(size)
        kept = self._kept.get(size_class)
        if kept:
            self._kept_bytes -= size_class
            return kept.pop()
        # An unguessable name: /dev/shm is world-listable, and a name someone could predict
        # is a name someone could take first. A taken name (however unlikely) just draws again.
        while True:
            try:
                return _shm.create(f"{self._prefix}_x{secrets.token_hex(6)}", size_class)
            except FileExistsError:
                continue

    def give(self, block: shared_memory.SharedMemory) -> None:
        size_class = _size_class(block.size)
        if self._kept_bytes + size_class > self._keep_bytes:
            _shm.release(block, unlink=True)
            return
        self._kept.setdefault(size_class, []).append(block)
        self._kept_bytes += size_class

    def close(self) -> None:
        for blocks in self._kept.values():
            for block in blocks:
                _shm.release(block, unlink=True)
        self._kept.clear()
        self._kept_bytes = 0


class SpillMaps:
    """A reader's mappings of spill blocks, least recently used dropped first."""

    def __init__(self, limit_bytes: int = KEEP_BYTES) -> None:
        self._limit_bytes = limit_bytes
        self._mapped_bytes = 0
        self._maps: OrderedDict[str, shared_memory.SharedMemory] = OrderedDict()

    def view(self, name: str) -> Any:
        block = self._maps.get(name)
        if block is not None:
            self._maps.move_to_end(name)
            return block.buf
        block = _shm.attach(name)
        self._maps[name] = block
        self._mapped_bytes += block.size
        while self._mapped_bytes > self._limit_bytes and len(self._maps) > 1:
            _, old = self._maps.popitem(last=False)
            self._mapped_bytes -= old.size
            _shm.release(old, unlink=False)
        return block.buf

    def close(self) -> None:
        for block in self._maps.values():
            _shm.release(block, unlink=False)
        self._maps.clear()
        self._mapped_bytes = 0
