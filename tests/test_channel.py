"""The SPSC record channel (``busmp._transport.channel``): order, wrap markers, fragments,
back-pressure, reset and control words, read straight off the shared-memory layout."""

from __future__ import annotations

import contextlib
import random
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busmp._transport import shm as _shm
from busmp._transport.channel import (
    DATA,
    HEAD_WORD,
    MORE,
    RECORD,
    TAIL_WORD,
    WRAP,
    Channel,
)

pytestmark = pytest.mark.timeout(30)  # a lost wake-up hangs: fail it instead

CAPACITY = 4096  # the smallest a channel is made with
LIMIT = CAPACITY // 2 - RECORD.size  # the largest payload that travels as one record


@contextlib.contextmanager
def channel(capacity: int = CAPACITY) -> Iterator[Channel]:
    """A fresh channel, closed (and so unlinked: the owner's close) after the test."""
    ch = Channel.create(f"{_shm.new_prefix()}_chan", capacity)
    try:
        yield ch
    finally:
        ch.close()


def drain(ch: Channel) -> list[tuple[int, bytes]]:
    records = []
    while (record := ch.get()) is not None:
        records.append(record)
        assert len(records) < 10_000, "more records than any test puts: the cursors ran past each other"
    return records


def header_at(ch: Channel, offset: int) -> tuple[int, int]:
    """The raw record header ``(length, kind)`` at ``offset`` of the data area."""
    length, kind = RECORD.unpack_from(ch._buf, DATA + offset)
    return length, kind


def cursors(ch: Channel) -> tuple[int, int]:
    words, _ = ch.control_words()
    return int(words[HEAD_WORD]), int(words[TAIL_WORD])


def test_records_come_back_whole_and_in_order_with_their_kinds():
    with channel() as ch:
        sent = [(i % 5, bytes([i]) * i) for i in range(40)]  # 0..39 bytes: every padding
        assert not ch.has_data() and ch.get() is None
        for kind, payload in sent[:20]:
            ch.put(kind, payload)
        assert ch.has_data()
        got = drain(ch)
        for kind, payload in sent[20:]:
            ch.put(kind, memoryview(payload))  # any buffer is a payload
        got += drain(ch)
        assert got == sent
        assert not ch.has_data()


def test_a_record_takes_its_header_and_its_payload_padded_to_eight_bytes():
    with channel() as ch:
        ch.put(3, b"abc")
        assert cursors(ch) == (RECORD.size + 8, 0)
        assert header_at(ch, 0) == (3, 3)
        assert ch.get() == (3, b"abc")
        assert cursors(ch) == (RECORD.size + 8, RECORD.size + 8)


def test_a_record_that_would_straddle_the_end_is_preceded_by_a_wrap_marker():
    with channel() as ch:
        # Two records leave 48 bytes before the end of the data area.
        second = CAPACITY - 48 - (RECORD.size + LIMIT) - RECORD.size
        ch.put(1, b"a" * LIMIT)
        ch.put(2, b"b" * second)
        assert drain(ch) == [(1, b"a" * LIMIT), (2, b"b" * second)]
        head, _ = cursors(ch)
        assert CAPACITY - head == 48
        ch.put(3, b"c" * 100)  # needs 108 bytes: does not fit in 48
        assert header_at(ch, head)[0] == WRAP
        assert header_at(ch, 0) == (100, 3)  # the record itself starts the data area again
        assert cursors(ch)[0] == CAPACITY + RECORD.size + 104
        assert ch.get() == (3, b"c" * 100)
        assert cursors(ch)[1] == cursors(ch)[0]


def test_a_record_that_ends_exactly_at_the_end_needs_no_wrap_marker():
    with channel() as ch:
        ch.put(1, b"a" * (CAPACITY // 2 - RECORD.size))
        ch.put(2, b"b" * (CAPACITY // 2 - 2 * RECORD.size))
        ch.put(3, b"")  # an empty record is a header alone: exactly the last 8 bytes
        assert cursors(ch)[0] == CAPACITY
        assert header_at(ch, CAPACITY - RECORD.size) == (0, 3)
        assert [kind for kind, _ in drain(ch)] == [1, 2, 3]
        ch.put(4, b"d")
        assert header_at(ch, 0) == (1, 4)
        assert ch.get() == (4, b"d")


def test_fewer_than_eight_bytes_before_the_end_are_skipped_by_both_sides_without_a_marker():
    """Padded records never leave such a gap themselves; the rule is the one both ends share
    for a gap too small for a header, so the cursors are set to make one."""
    with channel() as ch:
        words, _ = ch.control_words()
        words[HEAD_WORD] = words[TAIL_WORD] = CAPACITY - 4
        ch._buf[DATA + CAPACITY - 4: DATA + CAPACITY] = b"\xee" * 4
        ch.put(7, b"gap")
        assert bytes(ch._buf[DATA + CAPACITY - 4: DATA + CAPACITY]) == b"\xee" * 4  # no marker
        assert header_at(ch, 0) == (3, 7)
        assert ch.get() == (7, b"gap")
        assert cursors(ch) == (CAPACITY + 16, CAPACITY + 16)


def test_a_payload_bigger_than_half_the_capacity_travels_in_fragments_the_reader_joins():
    payload = bytes(range(256)) * 12  # 3072 bytes: more than half of 4096
    with channel() as ch:
        ch.put(9, payload)
        pieces = []
        while (piece := ch._get_one()) is not None:
            pieces.append(piece)
        assert [(kind, len(part)) for kind, part in pieces] == [(9 | MORE, LIMIT), (9, len(payload) - LIMIT)]
        assert b"".join(part for _, part in pieces) == payload

        ch.put(9, payload)
        assert ch.get() == (9, payload)  # MORE is the channel's flag: the caller's kind comes back


def test_the_reader_keeps_the_fragments_it_has_until_the_last_one_arrives():
    with channel() as ch:
        ch._put_one(5 | MORE, memoryview(b"first "), None)
        assert ch.get() is None  # a record is not complete yet
        ch._put_one(5 | MORE, memoryview(b"second "), None)
        assert ch.get() is None
        ch._put_one(5, memoryview(b"last"), None)
        assert ch.get() == (5, b"first second last")
        ch.put(6, b"next")
        assert ch.get() == (6, b"next")  # nothing of the joined record is left over


def test_a_payload_several_times_the_capacity_passes_while_the_consumer_reads():
    payload = random.Random(1).randbytes(3 * CAPACITY + 123)
    with channel() as ch:
        got: list[tuple[int, bytes]] = []
        ch.put(1, payload, wait=lambda: got.extend(drain(ch)))  # the consumer frees room
        got += drain(ch)
        assert got == [(1, payload)]


def test_a_full_channel_calls_wait_until_the_consumer_frees_room():
    with channel() as ch:
        record = b"x" * (CAPACITY // 4 - RECORD.size)
        for i in range(4):
            ch.put(i, record)
        assert cursors(ch) == (CAPACITY, 0)  # full
        waited = threading.Event()
        errors: list[BaseException] = []

        def wait() -> None:
            waited.set()
            threading.Event().wait(0.001)

        def producer() -> None:
            try:
                ch.put(4, b"late", wait=wait)
            except BaseException as exc:  # reported below, not lost in the thread
                errors.append(exc)

        thread = threading.Thread(target=producer, daemon=True)
        thread.start()
        assert waited.wait(10), "put() into a full channel did not call wait()"
        assert thread.is_alive(), "put() returned although the channel was full"
        assert cursors(ch) == (CAPACITY, 0)  # nothing written while waiting
        got = [ch.get()]  # frees a quarter of the ring
        thread.join(10)
        assert not thread.is_alive() and errors == []
        got += drain(ch)
        assert got == [(i, record) for i in range(4)] + [(4, b"late")]


def test_an_exception_from_wait_propagates_and_writes_nothing():
    with channel() as ch:
        record = b"x" * (CAPACITY // 2 - RECORD.size)
        ch.put(1, record)
        ch.put(2, record)

        def give_up() -> None:
            raise TimeoutError("consumer gone")

        with pytest.raises(TimeoutError, match="consumer gone"):
            ch.put(3, b"y", wait=give_up)
        assert drain(ch) == [(1, record), (2, record)]
        assert not ch.has_data()


def test_reset_empties_the_channel_and_its_control_words_and_forgets_fragments():
    with channel() as ch:
        ch.put(1, b"pending")
        ch._put_one(2 | MORE, memoryview(b"half"), None)
        ch.get()
        assert ch.get() is None  # the fragment is held by the reader
        ch.set_control(0, 11)
        ch.set_control(7, 77)
        ch.reset()
        assert not ch.has_data() and ch.get() is None
        assert cursors(ch) == (0, 0)
        assert [ch.control(i) for i in range(8)] == [0] * 8
        ch.put(3, b"after")
        assert ch.get() == (3, b"after")  # not joined to the forgotten fragment


def test_control_words_are_shared_with_the_other_end_and_kept_apart_from_the_cursors():
    with channel() as ch:
        other = Channel.attach(ch.name)
        try:
            assert not other.owner and other.capacity == ch.capacity == CAPACITY
            for i in range(8):
                ch.set_control(i, 1000 + i)
            assert [other.control(i) for i in range(8)] == [1000 + i for i in range(8)]
            words, first = other.control_words()
            words[first + 2] = -5
            assert ch.control(2) == -5
            assert cursors(ch) == (0, 0)
            ch.put(1, b"over")
            assert other.get() == (1, b"over")  # the other end reads what this one wrote
            assert ch.control(0) == 1000
        finally:
            other.close()
        ch.put(2, b"still")  # a reader's close leaves the block to its owner
        assert ch.get() == (2, b"still")


def test_attaching_to_a_block_that_is_not_a_channel_is_refused():
    block = _shm.create(f"{_shm.new_prefix()}_other", DATA + CAPACITY)
    try:
        with pytest.raises(ValueError, match="not a busmp channel"):
            Channel.attach(block.name)
    finally:
        _shm.release(block, unlink=True)


def test_a_requested_capacity_is_padded_to_eight_bytes_and_at_least_4096():
    with channel(100) as small, channel(5001) as odd:
        assert small.capacity == 4096
        assert odd.capacity == 5008
        payload = bytes(4000)  # two fragments: the limit follows the capacity
        odd.put(1, payload)
        assert odd.get() == (1, payload)


def checked(body: bytes) -> bytes:
    """A payload that carries its own checksum, so a torn or shifted read shows."""
    return body + struct.pack("<I", zlib.crc32(body))


def intact(payload: bytes) -> bool:
    body, (crc,) = payload[:-4], struct.unpack("<I", payload[-4:])
    return zlib.crc32(body) == crc


operations = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.integers(0, 3 * CAPACITY), st.integers(0, MORE - 1)),
        st.tuples(st.just("get"), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations, seed=st.integers(0, 2**32 - 1))
def test_any_mix_of_puts_and_gets_delivers_exactly_the_payloads_in_order(ops, seed):
    rng = random.Random(seed)
    sent: list[tuple[int, bytes]] = []
    got: list[tuple[int, bytes]] = []
    waits = 0

    def consume() -> None:
        # The single thread is both ends: a full channel is emptied by its own consumer.
        nonlocal waits
        waits += 1
        assert waits < 10_000, "wait() called with nothing left to consume"
        got.extend(drain(ch))

    with channel() as ch:
        for op, size, kind in ops:
            if op == "put":
                payload = checked(rng.randbytes(max(size - 4, 0)))
                sent.append((kind, payload))
                ch.put(kind, payload, wait=consume)
            elif (record := ch.get()) is not None:
                got.append(record)
        got += drain(ch)
        assert not ch.has_data()
        head, tail = cursors(ch)
        assert head == tail
    assert all(intact(payload) for _, payload in got)
    assert got == sent
