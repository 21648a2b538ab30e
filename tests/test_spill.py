"""Spill blocks (``busmp._transport.spill``): the block layout, size classes, the parent's
pool of reusable blocks and a reader's bounded set of mappings."""

from __future__ import annotations

import itertools
import os
import re
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from busmp._transport import shm as _shm
from busmp._transport import spill
from busmp._transport.spill import (
    ALIGN,
    MIN_BLOCK,
    SpillMaps,
    SpillPool,
    _size_class,
    block_size,
    layout,
    read_block,
    write_block,
)
from support import SHM, shm_blocks

pytestmark = pytest.mark.timeout(30)  # a take that keeps drawing taken names hangs: fail it instead


def pieces_of_every_kind() -> list[object]:
    """A pickle and out-of-band buffers of awkward lengths and types."""
    return [
        b"pickle-bytes" * 7,                         # 84 bytes: not a multiple of 64
        bytearray(b"\x01" * 64),                     # exactly one alignment unit
        b"",                                         # empty buffers travel too
        np.arange(37, dtype=np.float64),             # a multi-byte item type
        memoryview(np.arange(5, dtype=np.int32)),    # a typed memoryview
        bytes(range(256)) * 3 + b"tail",
    ]


def raw(piece: object) -> bytes:
    return memoryview(piece).tobytes()  # type: ignore[arg-type]


def test_a_block_round_trips_a_pickle_and_its_buffers():
    pieces = pieces_of_every_kind()
    block = bytearray(block_size(pieces))  # exactly the size it asks for is enough
    write_block(memoryview(block), pieces)
    payload, buffers = read_block(memoryview(block))
    assert payload == raw(pieces[0])
    assert [bytes(b) for b in buffers] == [raw(p) for p in pieces[1:]]
    assert all(isinstance(b, bytearray) for b in buffers)  # copies: the block may be reused


def test_every_piece_starts_on_a_64_byte_boundary_after_a_header_of_lengths():
    pieces = pieces_of_every_kind()
    lengths = [len(raw(p)) for p in pieces]
    block = bytearray(block_size(pieces))
    write_block(memoryview(block), pieces)
    (count,) = struct.unpack_from("<I", block)
    assert count == len(pieces)
    assert list(struct.unpack_from(f"<{count}Q", block, 4)) == lengths
    offsets, end = layout([4 + 8 * count, *lengths])
    assert end == len(block)
    assert all(offset % ALIGN == 0 for offset in offsets)
    for piece, offset, n in zip(pieces, offsets[1:], lengths):
        assert bytes(block[offset: offset + n]) == raw(piece)


def test_layout_rounds_each_piece_up_to_the_alignment():
    assert layout([1, 64, 65, 0, 3]) == ([0, 64, 128, 256, 256], 320)
    assert layout([]) == ([], 0)


def test_a_block_written_into_shared_memory_reads_back_through_another_mapping():
    pieces = [b"p" * 1000, np.ones(10_000, dtype=np.uint8)]
    block = _shm.create(f"{_shm.new_prefix()}_spilltest", block_size(pieces))
    other = _shm.attach(block.name)
    try:
        write_block(block.buf, pieces)
        payload, (buffer,) = read_block(other.buf)
        assert payload == b"p" * 1000 and buffer == bytearray(b"\x01" * 10_000)
    finally:
        _shm.release(other, unlink=False)
        _shm.release(block, unlink=True)


@given(st.integers(1, 1 << 40))
def test_a_size_class_serves_the_size_with_at_most_one_eighth_slack(n):
    size_class = _size_class(n)
    assert size_class >= max(n, MIN_BLOCK)
    if n > MIN_BLOCK:
        assert (size_class - n) * 8 <= n
    assert _size_class(size_class) == size_class  # a class is its own class: reuse is exact


def test_small_sizes_share_the_minimum_block_and_classes_grow_in_eight_steps_per_doubling():
    assert {_size_class(n) for n in (1, 100, MIN_BLOCK - 1, MIN_BLOCK)} == {MIN_BLOCK}
    classes = sorted({_size_class(n) for n in range(MIN_BLOCK + 1, 2 * MIN_BLOCK + 1, 97)})
    assert classes == [MIN_BLOCK + i * MIN_BLOCK // 8 for i in range(1, 9)]


# -- the parent's pool ------------------------------------------------------------------

@pytest.fixture
def pool():
    prefix = _shm.new_prefix()
    p = SpillPool(prefix, keep_bytes=4 * MIN_BLOCK)
    p.prefix = prefix  # type: ignore[attr-defined]
    yield p
    p.close()


def test_take_gives_a_block_of_the_size_class_and_give_keeps_it_for_the_next_take(pool):
    block = pool.take(100)
    assert block.size >= MIN_BLOCK
    name = block.name
    assert not pool.has(100)
    pool.give(block)
    assert pool.has(100) and pool.has(MIN_BLOCK) and not pool.has(MIN_BLOCK + 1)
    again = pool.take(MIN_BLOCK)  # another size of the same class
    assert again.name == name
    bigger = pool.take(MIN_BLOCK + 1)  # another class: a new block
    assert bigger.name != name
    assert shm_blocks(pool.prefix) == {name, bigger.name}
    pool.give(again)
    pool.give(bigger)


def test_blocks_given_back_past_keep_bytes_are_unlinked(pool):
    blocks = [pool.take(1) for _ in range(6)]
    names = [b.name for b in blocks]
    for block in blocks:
        pool.give(block)
    # keep_bytes holds four minimum blocks: the first four given back stay, the rest go
    assert shm_blocks(pool.prefix) == set(names[:4])
    kept = {pool.take(1).name for _ in range(4)}
    assert kept == set(names[:4])
    assert not pool.has(1)
    fresh = pool.take(1)
    assert fresh.name not in names
    for name in kept:
        pool.give(_shm.attach(name))  # any mapping of the block goes back the same way
    pool.give(fresh)


def test_close_unlinks_every_kept_block(pool):
    for block in [pool.take(1), pool.take(3 * MIN_BLOCK)]:
        pool.give(block)
    assert len(shm_blocks(pool.prefix)) == 2
    pool.close()
    assert shm_blocks(pool.prefix) == set()
    assert not pool.has(1)


def test_block_names_are_random_tokens_not_a_sequence(pool):
    blocks = [pool.take(1) for _ in range(3)]
    try:
        tokens = []
        for block in blocks:
            match = re.fullmatch(re.escape(pool.prefix) + r"_x([0-9a-f]{12})", block.name)
            assert match, block.name
            tokens.append(int(match.group(1), 16))
        assert len(set(tokens)) == 3
        # a counter (or a clock) would put successive names next to each other
        assert all(abs(a - b) > 1 << 16 for a, b in itertools.pairwise(tokens))
    finally:
        for block in blocks:
            pool.give(block)


def test_a_name_someone_else_took_first_is_skipped_for_a_fresh_draw(pool, monkeypatch):
    tokens = iter(["aaaaaaaaaaaa", "bbbbbbbbbbbb"])
    monkeypatch.setattr(spill.secrets, "token_hex", lambda n: next(tokens))
    squatter = _shm.create(f"{pool.prefix}_xaaaaaaaaaaaa", 16)
    try:
        block = pool.take(1)
        assert block.name == f"{pool.prefix}_xbbbbbbbbbbbb"
        assert squatter.size == 16 and os.path.exists(os.path.join(SHM, squatter.name))
        pool.give(block)
    finally:
        _shm.release(squatter, unlink=True)


def test_a_create_that_fails_with_file_exists_is_retried_under_another_name(pool, monkeypatch):
    tried: list[str] = []
    create = _shm.create

    def create_once_taken(name, size):
        tried.append(name)
        if len(tried) == 1:
            raise FileExistsError(name)
        return create(name, size)

    monkeypatch.setattr(spill._shm, "create", create_once_taken)
    block = pool.take(1)
    assert len(tried) == 2 and tried[0] != tried[1] and block.name == tried[1]
    pool.give(block)


# -- a reader's mappings ----------------------------------------------------------------

@pytest.fixture
def blocks():
    """Three blocks of the minimum size, each filled with its own byte."""
    made = []
    prefix = _shm.new_prefix()
    for i in range(3):
        block = _shm.create(f"{prefix}_map{i}", MIN_BLOCK)
        block.buf[:] = bytes([65 + i]) * MIN_BLOCK
        made.append(block)
    yield [b.name for b in made]
    for block in made:
        _shm.release(block, unlink=True)


@pytest.fixture
def attaches(monkeypatch):
    """The names SpillMaps attaches to, in order."""
    seen: list[str] = []
    attach = _shm.attach

    def counting(name):
        seen.append(name)
        return attach(name)

    monkeypatch.setattr(spill._shm, "attach", counting)
    return seen


def first_byte(view) -> int:
    value = view[0]
    return int(value)


def test_maps_by_name_and_keeps_a_mapped_block_for_the_next_view(blocks, attaches):
    maps = SpillMaps()
    try:
        assert [first_byte(maps.view(name)) for name in blocks] == [65, 66, 67]
        assert first_byte(maps.view(blocks[0])) == 65
        assert attaches == blocks  # the second view of a block costs no new mapping
    finally:
        maps.close()


def test_keeps_at_most_its_byte_limit_mapped_dropping_the_least_recently_used(blocks, attaches):
    maps = SpillMaps(limit_bytes=2 * MIN_BLOCK)
    a, b, c = blocks
    try:
        maps.view(a)
        maps.view(b)
        maps.view(a)  # now b is the least recently used
        maps.view(c)  # over the limit: b goes
        assert attaches == [a, b, c]
        maps.view(a)
        maps.view(c)
        assert attaches == [a, b, c]  # still mapped
        assert first_byte(maps.view(b)) == 66
        assert attaches == [a, b, c, b]  # dropped, so mapped again
    finally:
        maps.close()
    assert all(os.path.exists(os.path.join(SHM, name)) for name in blocks)  # a reader never unlinks


def test_a_block_bigger_than_the_limit_is_still_mapped_while_in_use(blocks, attaches):
    maps = SpillMaps(limit_bytes=MIN_BLOCK // 2)
    try:
        assert first_byte(maps.view(blocks[0])) == 65
        assert first_byte(maps.view(blocks[0])) == 65
        assert attaches == [blocks[0]]
        maps.view(blocks[1])
        assert first_byte(maps.view(blocks[0])) == 65
        assert attaches == [blocks[0], blocks[1], blocks[0]]
    finally:
        maps.close()


def test_close_drops_every_mapping(blocks, attaches):
    maps = SpillMaps()
    for name in blocks:
        maps.view(name)
    maps.close()
    assert first_byte(maps.view(blocks[0])) == 65  # usable again: maps afresh
    assert attaches == [*blocks, blocks[0]]
    maps.close()
