"""Cutting a publish into jobs: balance across workers, chunks split where jobs end, exact batches."""

from __future__ import annotations

import pytest

from busmp import Event
from busmp._transport.codec import encode_chunk, encode_event
from busmp._dispatch import BatchRoute, Routes
from busmp._workers.jobs import Job, Planner
from busmp._pipeline import Ticket
from busmp._transport.records import BATCH, EVENTS
from busmp._transport.slots import Slots
from busmp._transport.ring import SlotRing


def new_slots(*args, **kwargs):
    """A ring with its parent-side allocator, as a store owns it."""
    return Slots(SlotRing.create(*args, **kwargs))


def noop(ctx, ev):
    return None


@pytest.fixture
def ring():
    r = new_slots(1024)
    yield r
    r.close()


def fill(ring, counts, projection="p"):
    """Write one slot per entry of ``counts`` (a chunk when > 1); return the slots."""
    slots, seq = [], 1
    for n in counts:
        events = [Event(projection, i) for i in range(n)]
        payload, flags, buffers = encode_event(events[0]) if n == 1 else encode_chunk(events)
        slot = ring.take(n)
        ring.write(slot, seq, hash(projection), payload, flags, buffers)
        slots.append(slot)
        seq += n
    return slots


def covered(jobs):
    """Every (slot, index) the jobs name, in job order."""
    return [(slot, i) for job in jobs for slot, _, start, stop in job.entries for i in range(start, stop)]


def test_a_big_publish_is_cut_into_several_jobs_per_worker(ring):
    slots = fill(ring, [1] * 200)
    jobs = Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), None, [0, 0])
    assert len(jobs) >= 2 * 2 and all(job.kind == EVENTS for job in jobs)  # enough to feed both
    assert sum(job.events for job in jobs) == 200
    assert sorted(slot for job in jobs for slot in job.slots) == sorted(slots)


def test_chunks_are_split_so_that_a_few_slots_of_slow_events_still_spread(ring):
    slots = fill(ring, [35] * 12)  # 420 events in 12 slots; each event may take a millisecond
    jobs = Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), None, [0, 0])
    assert max(job.events for job in jobs) == -(-420 // 32) and len(jobs) == 30  # ~16 per worker
    assert covered(jobs) == [(slot, i) for slot in slots for i in range(35)]
    assert all(len(set(job.slots)) == len(job.slots) for job in jobs)  # a slot once per job


def test_two_big_chunks_are_not_a_small_publish(ring):
    slots = fill(ring, [100, 100])
    jobs = Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), None, [0, 0])
    assert len(jobs) > 2 and sum(job.events for job in jobs) == 200


def test_a_group_with_a_ticket_is_one_job_on_the_least_busy_worker(ring):
    slots = fill(ring, [1] * 40)
    (job,) = Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), Ticket(), [500, 3])
    assert job.worker == 1 and job.events == 40 and job.slots == slots


def test_a_few_events_are_cut_one_job_per_worker(ring):
    slots = fill(ring, [1] * 5)
    jobs = Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), None, [0, 0])
    assert [job.events for job in jobs] == [3, 2]


def test_events_nobody_handles_make_no_job(ring):
    slots = fill(ring, [1, 1], projection="unhandled")
    assert Planner(ring, 2).plan(slots, Routes({"p": (noop,)}), None, [0, 0]) == []


def test_batch_jobs_hold_exactly_one_call_and_split_chunks_where_needed(ring):
    slots = fill(ring, [5, 5])  # two chunks of five events
    routes = Routes({}, {"p": (BatchRoute(3, noop, "b"),)})
    jobs = Planner(ring, 1).plan(slots, routes, None, [0])
    assert [job.kind for job in jobs] == [BATCH] * 4
    assert [job.events for job in jobs] == [3, 3, 3, 1]
    assert [entry[2:] for entry in jobs[1].entries] == [(3, 5), (0, 1)]  # end of chunk one, start of two


def test_positions_map_back_to_slot_and_index():
    job = Job(1, 0, EVENTS, [(7, 100, 2, 5), (9, 200, 0, 2)])
    assert job.events == 5
    assert [job.locate(pos) for pos in range(5)] == [(7, 100, 2), (7, 100, 3), (7, 100, 4), (9, 200, 0), (9, 200, 1)]
