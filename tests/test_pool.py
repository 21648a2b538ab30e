"""Duties beyond the contract: release everything, even for a store nobody drained; never wait on oneself."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
from multiprocessing import resource_tracker

import psutil
import pytest

from busmp import Dispatcher, Event, EventStore, Result
from support import gone, shm_blocks, wait_until


def pid_handler(ctx, ev):
    return Result(value=os.getpid())


@pytest.mark.timeout(60)
def test_store_dropped_without_drain_stops_workers_and_unlinks_memory():
    before = shm_blocks()
    d = Dispatcher()
    d.register("p", pid_handler)
    store = EventStore(d, 64, workers=1, start_method="fork")
    pids: list[int] = []
    store.on_after(lambda ctx, ev, res, err: pids.append(res.value))
    store.subscribe(Event("p"))
    store.publish()
    store.flush(timeout=10)
    assert pids and pids[0] != os.getpid()
    assert shm_blocks() - before  # ring and channels exist
    del store
    gc.collect()
    assert shm_blocks() - before == set()
    assert wait_until(lambda: gone(pids[0]), 5), "the worker outlived its store"
    assert not [t for t in threading.enumerate() if t.name.startswith("busmp-collector")]


def scheduler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("busmp-scheduler-")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 2])
def test_a_store_dropped_with_a_live_timer_is_finalized(workers):
    """The scheduler thread must not keep its store alive: a timer far in the future would
    otherwise pin the store's memory and workers until the process ends."""
    resource_tracker.ensure_running()  # a child of its own, not a worker
    before, threads_before = shm_blocks(), scheduler_threads()
    children_before = {p.pid for p in psutil.Process().children()}
    store = EventStore(Dispatcher(), 64, workers=workers, start_method="fork" if workers else None)
    timer = store.schedule_after(60, Event("p"))
    assert timer is not None and len(scheduler_threads()) == len(threads_before) + 1
    workers_started = {p.pid for p in psutil.Process().children()} - children_before
    assert len(workers_started) == workers
    assert shm_blocks() - before
    del store
    gc.collect()
    assert shm_blocks() - before == set()
    assert scheduler_threads() == threads_before
    assert timer.cancel() is False  # it will never fire
    assert wait_until(lambda: all(gone(pid) for pid in workers_started), 5), "workers outlived their store"


@pytest.mark.timeout(60)
def test_a_worker_store_that_is_drained_is_not_torn_down_twice_when_collected():
    d = Dispatcher()
    d.register("p", pid_handler)
    store = EventStore(d, 64, workers=1, start_method="fork")
    store.drain(timeout=10)
    assert not store._finalizer.alive  # drain ran it; collection must not run it again
    unraisable: list[object] = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        del store
        gc.collect()
    finally:
        sys.unraisablehook = previous
    assert unraisable == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [0, 1])
def test_flush_inside_a_hook_is_refused_instead_of_deadlocking(workers):
    d = Dispatcher()
    d.register("p", pid_handler)
    refused: list[BaseException] = []

    def impatient(ctx, ev, res, err):
        try:
            store.flush(timeout=1)
        except RuntimeError as exc:
            refused.append(exc)

    with EventStore(d, 64, workers=workers, start_method="fork") as store:
        store.on_after(impatient)
        store.subscribe(Event("p"))
        store.publish()
        store.flush(timeout=10)
    assert len(refused) == 1 and "hook" in str(refused[0])


def _refuse_to_load():
    raise RuntimeError("cannot be rebuilt here")


class RefusesToLoad:
    """Pickles fine, fails to unpickle: an event no reader can decode."""

    def __reduce__(self):
        return (_refuse_to_load, ())


@pytest.mark.timeout(60)
def test_an_undecodable_event_is_one_dead_letter_and_the_rest_go_on():
    from busmp import DeadLetterQueue

    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 64, workers=1, start_method="fork", dlq=DeadLetterQueue()) as store:
        store.subscribe(Event("p", 1))
        store.subscribe(Event("p", RefusesToLoad(), id="bad"))
        store.subscribe(Event("p", 2))
        store.publish()
        store.flush(timeout=10)
        letters = store.dlq.entries()
        assert len(letters) == 1
        assert letters[0].handler == "busmp.codec.decode_event"
        assert "cannot be rebuilt here" in str(letters[0].error)
        assert letters[0].event.projection == "busmp.undecodable"
        assert store.metrics() == (3, 3, 1)


def fan_out_three(ctx, ev):
    if ev.projection == "seed":
        for i in range(3):
            ctx.emit(Event("leaf", (ev.data, i)))
    return Result(value=ev.data)


@pytest.mark.timeout(60)
def test_follow_ups_wait_for_room_in_a_full_ring_and_are_all_handled():
    d = Dispatcher()
    d.register("seed", fan_out_three)
    d.register("leaf", fan_out_three)
    leaves: list[object] = []
    with EventStore(d, 4, workers=1, start_method="fork") as store:
        store.on_after(lambda ctx, ev, res, err: leaves.append(ev.data) if ev.projection == "leaf" else None)
        store.subscribe_many(Event("seed", n) for n in range(4))  # the ring is full
        store.publish()
        store.flush(timeout=20)
        assert sorted(leaves) == [(n, i) for n in range(4) for i in range(3)]
        assert store.metrics() == (16, 16, 0)
        assert store.stats().free_slots == 4


def test_an_unknown_start_method_is_refused_with_the_choices_and_nothing_is_left():
    with pytest.raises(ValueError, match=r"start_method must be one of .*'spawn'.*got 'forkk'"):
        EventStore(Dispatcher(), 8, workers=1, start_method="forkk")


@pytest.mark.timeout(60)
def test_workers_that_spin_after_submitted_events_go_quiet_when_idle():
    """A worker spins longer after a job with a submitted event (round trips one at a time);
    once none comes, it spins that long once and sleeps: idle, it costs next to no CPU."""
    d = Dispatcher()
    d.register("p", pid_handler)
    with EventStore(d, 64, workers=2) as store:
        for _ in range(300):
            store.submit(Event("p")).result(timeout=10)
        workers = [psutil.Process(pid) for pid in store.stats().worker_pids]
        time.sleep(0.2)
        before = [sum(p.cpu_times()[:2]) for p in workers]
        time.sleep(1.0)
        idle_cpu = [sum(p.cpu_times()[:2]) - b for p, b in zip(workers, before)]
        assert max(idle_cpu) < 0.05, f"idle workers used {idle_cpu} s of CPU in a second"
