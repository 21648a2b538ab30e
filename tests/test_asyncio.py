"""Specification of the asyncio side: ``async def`` handlers (sync mode and workers alike),
``asubmit``, ``asubscribe``, ``apublish``, ``aflush``, ``adrain`` and ``async with``.

Overlap is shown without clocks: handlers that wait for each other (a rendezvous) can only
all finish if they run at once, and a deadline turns "they did not" into a failure.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from busmp import (
    BLOCK, DeadLetterQueue, Dispatcher, Event, EventStore, Result, StoreClosed, WorkerCrashed,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
MODES = [0, 1]  # sync mode; one worker process (every event meets every other there)


class Meeting:
    """Module-level state of the process that runs the handlers (the parent or the worker)."""

    present = 0
    most = 0


async def rendezvous(ctx, ev):
    """Arrive, then wait until ``ev.data`` handlers are here at once (or fail after 5 s)."""
    Meeting.present += 1
    Meeting.most = max(Meeting.most, Meeting.present)
    deadline = time.monotonic() + 5
    while Meeting.most < ev.data:
        if time.monotonic() > deadline:
            Meeting.present -= 1
            raise TimeoutError(f"only {Meeting.most} of {ev.data} handlers ever ran at once")
        await asyncio.sleep(0.002)
    Meeting.present -= 1
    return Result("met", Meeting.most)


async def alone(ctx, ev):
    """Fails if another handler of this process runs while it awaits."""
    Meeting.present += 1
    try:
        await asyncio.sleep(0.01)
        if Meeting.present != 1:
            raise RuntimeError(f"{Meeting.present} handlers ran at once")
        return Result("alone", ev.data)
    finally:
        Meeting.present -= 1


async def async_double(ctx, ev):
    await asyncio.sleep(0.001)
    return Result("async_double", ev.data * 2)


def sync_inc(ctx, ev):
    return Result("sync_inc", ev.data + 1)


async def async_fail(ctx, ev):
    await asyncio.sleep(0)
    raise ValueError(f"async failure {ev.data}")


async def async_batch(ctx, events):
    await asyncio.sleep(0.001)
    return [Result("async_batch", e.data) for e in events]


async def async_emit(ctx, ev):
    await asyncio.sleep(0)
    if ev.data > 0:
        ctx.emit(Event("chain", ev.data - 1))
    return Result("emitted", ev.data)


async def sleeper(ctx, ev):
    await asyncio.sleep(ev.data)
    return Result("slept", os.getpid())


async def die_after_await(ctx, ev):
    await asyncio.sleep(ev.data)
    os._exit(11)


def passthrough(handler):
    """A plain (not async) middleware around an async handler: what it returns is awaited."""
    def wrapped(ctx, ev):
        return handler(ctx, ev)
    return wrapped


def store_for(d: Dispatcher, workers: int, **kw: object) -> EventStore:
    return EventStore(d, kw.pop("buffer_size", 1 << 10), workers=workers, dlq=DeadLetterQueue(),  # type: ignore[arg-type]
                      **kw)


def reset_meeting() -> None:
    Meeting.present = Meeting.most = 0


@pytest.mark.parametrize("workers", MODES)
def test_async_handlers_are_awaited_in_order_with_sync_ones_and_batch_handlers(workers):
    d = Dispatcher()
    d.register("p", sync_inc, async_double, sync_inc)
    with store_for(d, workers) as store:
        store.register_batch("p", 3, async_batch)
        results = store.submit(Event("p", 5)).result(timeout=WAIT)
        assert [(r.message, r.value) for r in results] == [
            ("sync_inc", 6), ("async_double", 10), ("sync_inc", 6), ("async_batch", 5)]
        for i in range(7):
            store.subscribe(Event("p", i))
        store.publish()
        store.flush(timeout=WAIT)
        assert store.metrics() == (8, 8 * 4, 0)
        assert len(store.dlq) == 0


@pytest.mark.parametrize("workers", MODES)
def test_async_failures_are_dead_letters_with_their_own_type(workers):
    d = Dispatcher()
    d.register("p", async_fail, sync_inc)
    with store_for(d, workers) as store:
        seen = []
        store.on_error(lambda ctx, ev, err: seen.append(type(err).__name__))
        err = store.submit(Event("p", 1)).exception(timeout=WAIT)
        assert isinstance(err, ValueError) and "async failure 1" in str(err)
        store.flush(timeout=WAIT)
        (letter,) = store.dlq.entries()
        assert letter.handler.endswith("async_fail") and isinstance(letter.error, ValueError)
        assert seen == ["ValueError"]
        assert store.metrics() == (1, 2, 1)


@pytest.mark.parametrize("workers", MODES)
def test_handlers_of_different_events_overlap_while_they_await(workers):
    """30 events, each of its own publish (so a worker gets them as 30 jobs, far more than the
    jobs it is fed at once): they all meet, so all 30 awaited at the same time."""
    reset_meeting()
    n = 30
    d = Dispatcher()
    d.register("meet", rendezvous)
    with store_for(d, workers) as store:
        async def main():
            return await asyncio.gather(*(store.asubmit(Event("meet", n)) for _ in range(n)))

        results = asyncio.run(main())
        assert all(r == [Result("met", n)] for r in results), results[:3]
        assert store.metrics() == (n, n, 0)


@pytest.mark.parametrize("workers", MODES)
def test_a_plain_publish_overlaps_async_handlers_too(workers):
    """Sync mode: the events of one publish() overlap (it returns when they are done); with
    workers, those of separate publishes do as well."""
    reset_meeting()
    n = 25
    d = Dispatcher()
    d.register("meet", rendezvous)
    with store_for(d, workers) as store:
        for _ in range(n):
            store.subscribe(Event("meet", n))
            if workers:
                store.publish()
        store.publish()
        store.flush(timeout=WAIT)
        assert store.metrics() == (n, n, 0) and len(store.dlq) == 0


@pytest.mark.parametrize("workers", MODES)
def test_a_transaction_runs_async_handlers_one_at_a_time_in_order(workers):
    reset_meeting()
    d = Dispatcher()
    d.register("tx", alone)
    with store_for(d, workers) as store:
        order = []
        store.on_after(lambda ctx, ev, res, err: order.append((ev.data, res.value, err)))
        with store.begin_transaction() as tx:
            for i in range(8):
                tx.publish(Event("tx", i))
        assert order == [(i, i, None) for i in range(8)]


@pytest.mark.parametrize("workers", MODES)
def test_middleware_around_an_async_handler_is_awaited(workers):
    d = Dispatcher()
    d.register("p", async_double)
    with store_for(d, workers) as store:
        store.use(passthrough)
        assert store.submit(Event("p", 4)).result(timeout=WAIT) == [Result("async_double", 8)]


@pytest.mark.parametrize("workers", MODES)
def test_async_handlers_emit_follow_ups(workers):
    d = Dispatcher()
    d.register("chain", async_emit)
    with store_for(d, workers) as store:
        store.subscribe(Event("chain", 5))
        store.publish()
        store.flush(timeout=WAIT)
        assert store.metrics() == (6, 6, 0)


def test_sync_publish_inside_a_running_loop_refuses_async_handlers_and_takes_nothing():
    d = Dispatcher()
    d.register("p", async_double)
    d.register("plain", sync_inc)
    store = store_for(d, 0)

    async def main():
        store.subscribe(Event("plain", 1))
        store.subscribe(Event("p", 1))
        with pytest.raises(RuntimeError, match=r"apublish\(\)"):
            store.publish()
        assert store.stats().pending == 2  # nothing was taken
        assert await store.apublish() == 2
        await store.adrain()

    asyncio.run(main())
    assert store.metrics() == (2, 2, 0)


def test_a_middleware_made_async_handler_in_a_running_loop_becomes_a_dead_letter():
    """Sync mode cannot see beforehand that a middleware returns an awaitable: inside a running
    loop that call fails with the RuntimeError naming apublish(), and nothing is lost."""
    d = Dispatcher()

    def sync_looking(ctx, ev):
        return async_double(ctx, ev)

    d.register("p", sync_looking, sync_inc)
    store = store_for(d, 0)

    async def main():
        store.subscribe(Event("p", 1))
        store.publish()

    asyncio.run(main())
    (letter,) = store.dlq.entries()
    assert isinstance(letter.error, RuntimeError) and "apublish()" in str(letter.error)
    assert store.metrics() == (1, 2, 1)
    store.drain()


@pytest.mark.parametrize("workers", MODES)
def test_asubmit_aflush_and_async_with(workers):
    d = Dispatcher()
    d.register("p", async_double, sync_inc)

    async def main():
        async with store_for(d, workers) as store:
            assert await store.asubmit(Event("p", 2)) == [Result("async_double", 4), Result("sync_inc", 3)]
            for i in range(20):
                await store.asubscribe(Event("p", i))
            assert await store.apublish() == 20
            await store.aflush(timeout=WAIT)
            assert store.stats().in_flight == 0
            assert store.metrics() == (21, 42, 0)
        return store

    store = asyncio.run(main())
    assert store.stats().state == "closed"
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p", 1))


def test_aflush_times_out_and_adrain_completes_what_is_cut_off():
    d = Dispatcher()
    d.register("slow", sleeper)
    store = store_for(d, 1)

    async def main():
        future = asyncio.ensure_future(store.asubmit(Event("slow", 30)))
        await asyncio.sleep(0.2)
        with pytest.raises(TimeoutError):
            await store.aflush(timeout=0.1)
        with pytest.raises(TimeoutError):
            await store.adrain(timeout=0.2)
        with pytest.raises(StoreClosed):
            await future
        await store.adrain()  # idempotent

    asyncio.run(main())
    assert len(store.dlq) == 1


def test_asubscribe_waits_for_room_without_blocking_the_loop():
    d = Dispatcher()

    def slow_sync(ctx, ev):
        time.sleep(0.4)

    d.register("p", slow_sync)
    store = store_for(d, 1, buffer_size=1, policy=BLOCK)

    async def main():
        await store.asubscribe(Event("p", 0))
        await store.apublish()  # the worker holds the only slot for a while
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick = asyncio.ensure_future(ticker())
        with pytest.raises(TimeoutError):
            await store.asubscribe(Event("p", 1), timeout=0.05)
        await store.asubscribe(Event("p", 2), timeout=WAIT)  # woken when the slot is free
        tick.cancel()
        assert ticks >= 5  # the loop kept running while asubscribe waited
        assert store.stats().pending == 1
        await store.apublish()
        await store.adrain(timeout=WAIT)

    asyncio.run(main())
    assert store.metrics() == (2, 2, 0)


def test_a_crash_while_handlers_await_charges_exactly_the_unfinished_ones():
    d = Dispatcher()
    d.register("slow", sleeper)
    d.register("die", die_after_await)
    with store_for(d, 1) as store:
        done_before = [store.submit(Event("slow", 0.0)) for _ in range(5)]
        for future in done_before:
            assert future.result(timeout=WAIT)[0].message == "slept"
        waiting = [store.submit(Event("slow", 30)) for _ in range(4)]
        crash = store.submit(Event("die", 0.3))
        for future in [*waiting, crash]:
            err = future.exception(timeout=WAIT)
            assert isinstance(err, WorkerCrashed) and err.exitcode == 11
        letters = store.dlq.entries()
        assert len(letters) == 5 and all(isinstance(le.error, WorkerCrashed) for le in letters)
        assert sorted(le.handler.rsplit(".", 1)[1] for le in letters) == ["die_after_await"] + ["sleeper"] * 4
        assert store.metrics() == (10, 10, 5)
        assert store.submit(Event("slow", 0.0)).result(timeout=WAIT)  # the replacement works


def test_drain_waits_for_handlers_still_awaiting():
    d = Dispatcher()
    d.register("slow", sleeper)
    store = store_for(d, 2)
    futures = [store.submit(Event("slow", 0.2)) for _ in range(10)]
    store.drain(timeout=WAIT)
    assert all(f.result(timeout=0)[0].message == "slept" for f in futures)
    assert store.metrics() == (10, 10, 0)


def test_a_cancelled_asubmit_still_has_its_event_handled():
    d = Dispatcher()
    d.register("slow", sleeper)
    store = store_for(d, 1)

    async def main():
        task = asyncio.ensure_future(store.asubmit(Event("slow", 0.2)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await store.aflush(timeout=WAIT)
        await store.adrain()

    asyncio.run(main())
    assert store.metrics() == (1, 1, 0)


def test_many_loops_in_many_threads_share_one_store():
    d = Dispatcher()
    d.register("p", async_double)
    with store_for(d, 2) as store:
        got = []

        def thread_main(base):
            async def main():
                return await asyncio.gather(*(store.asubmit(Event("p", base + i)) for i in range(50)))
            got.extend(asyncio.run(main()))

        threads = [threading.Thread(target=thread_main, args=(k * 100,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r[0].value for r in got) == sorted(2 * (k * 100 + i) for k in range(3) for i in range(50))


class Flaky:
    calls = 0


async def flaky(ctx, ev):
    """Fails (after awaiting) until its ``ev.data``-th call."""
    Flaky.calls += 1
    await asyncio.sleep(0)
    if Flaky.calls < ev.data:
        raise ConnectionError(f"call {Flaky.calls}")
    return Result("ok", Flaky.calls)


@pytest.mark.parametrize("workers", MODES)
def test_with_retry_retries_what_an_async_handler_raises_when_awaited(workers):
    from busmp import constant_backoff, with_retry

    Flaky.calls = 0
    d = Dispatcher()
    d.register("flaky", flaky)
    with store_for(d, workers) as store:
        store.use(with_retry(3, constant_backoff(0.01)))
        assert store.submit(Event("flaky", 3)).result(timeout=WAIT) == [Result("ok", 3)]
        err = store.submit(Event("flaky", 100)).exception(timeout=WAIT)  # 4 more calls, all fail
        assert isinstance(err, ConnectionError) and str(err) == "call 7"
