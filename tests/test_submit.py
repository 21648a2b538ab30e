"""Specification of ``EventStore.submit``: a future per event, in sync mode and with workers.

The future's result is the list of the event's ``Result``s (per-event handlers in registration
order, then batch handlers in registration order); its exception is the first failing handler's
error in that order; a drop, a drain or a dying worker completes it with that error. It is
running from the start and never left pending.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future

import pytest

from busmp import (
    BLOCK, DROP_OLDEST, RETURN_ERROR, BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore, Result,
    StoreClosed, WorkerCrashed,
)

pytestmark = pytest.mark.timeout(60)

WAIT = 10.0
MODES = [0, 2]  # sync mode; two worker processes (the default start method)


def double(ctx, ev):
    return Result("double", ev.data * 2)


def plus_one(ctx, ev):
    return Result("plus_one", ev.data + 1)


def returns_none(ctx, ev):
    return None


def fail_on_three(ctx, ev):
    if ev.data == 3:
        raise ValueError(f"three ({ev.id})")
    return Result("ok", ev.data)


def fail_always(ctx, ev):
    raise KeyError(ev.data)


def batch_sum(ctx, events):
    total = sum(e.data for e in events)
    return [Result("sum", total) for _ in events]


def batch_ids(ctx, events):
    return [Result("id", e.id) for e in events]


def batch_fails(ctx, events):
    raise RuntimeError("batch broke")


def slow(ctx, ev):
    time.sleep(ev.data)
    return Result("slow", os.getpid())


def die(ctx, ev):
    os._exit(9)


def store_for(d: Dispatcher, workers: int, **kw: object) -> EventStore:
    return EventStore(d, kw.pop("buffer_size", 1 << 8), workers=workers, dlq=DeadLetterQueue(),  # type: ignore[arg-type]
                      **kw)


@pytest.mark.parametrize("workers", MODES)
def test_results_in_registration_order_then_batch_handlers(workers):
    d = Dispatcher()
    d.register("p", double, returns_none, plus_one)
    with store_for(d, workers) as store:
        store.register_batch("p", 4, batch_ids)
        store.register_batch("p", 2, batch_sum)
        for i in range(5):  # other events of the same publish, not submitted
            store.subscribe(Event("p", 100 + i, id=f"plain{i}"))
        future = store.submit(Event("p", 5, id="mine"))
        results = future.result(timeout=WAIT)
        assert isinstance(future, Future)
        assert [r.message for r in results] == ["double", "", "plus_one", "id", "sum"]
        assert results[0].value == 10 and results[2].value == 6 and results[3].value == "mine"
        assert results[1] == Result()
        store.flush(timeout=WAIT)
        assert store.metrics() == (6, 6 * 5, 0)  # results travelling back count nothing twice


@pytest.mark.parametrize("workers", MODES)
def test_nothing_registered_gives_an_empty_list(workers):
    d = Dispatcher()
    d.register("other", double)
    with store_for(d, workers) as store:
        assert store.submit(Event("nobody", 1)).result(timeout=WAIT) == []
        store.register_batch("batch-only", 8, batch_ids)
        assert store.submit(Event("batch-only", 1, id="b")).result(timeout=WAIT) == [Result("id", "b")]


@pytest.mark.parametrize("workers", MODES)
def test_first_failing_handler_in_order_and_every_dead_letter_kept(workers):
    d = Dispatcher()
    d.register("p", double, fail_on_three, fail_always)
    with store_for(d, workers) as store:
        store.register_batch("p", 8, batch_fails)
        ok_events = store.submit(Event("p", 3, id="e3"))
        err = ok_events.exception(timeout=WAIT)
        assert isinstance(err, ValueError) and str(err) == "three (e3)"
        store.flush(timeout=WAIT)
        assert sorted(type(le.error).__name__ for le in store.dlq.entries()) == [
            "KeyError", "RuntimeError", "ValueError"]

        d2 = store.submit(Event("p", 4, id="e4"))  # fail_on_three passes: fail_always is first
        assert isinstance(d2.exception(timeout=WAIT), KeyError)


@pytest.mark.parametrize("workers", MODES)
def test_a_failing_batch_handler_fails_the_future_when_the_others_succeed(workers):
    d = Dispatcher()
    d.register("p", double)
    with store_for(d, workers) as store:
        store.register_batch("p", 8, batch_ids)
        store.register_batch("p", 8, batch_fails)
        err = store.submit(Event("p", 1)).exception(timeout=WAIT)
        assert isinstance(err, RuntimeError) and str(err) == "batch broke"


def test_the_future_is_running_from_the_start_and_cannot_be_cancelled():
    d = Dispatcher()
    d.register("slow", slow)
    with store_for(d, 1) as store:
        future = store.submit(Event("slow", 0.3))
        assert future.running() and not future.done()
        assert future.cancel() is False
        assert future.result(timeout=WAIT)[0].value != os.getpid()


@pytest.mark.parametrize("workers", MODES)
def test_submit_raises_what_subscribe_raises_and_changes_nothing(workers):
    d = Dispatcher()
    d.register("p", double)
    with store_for(d, workers, buffer_size=2, policy=RETURN_ERROR) as store:
        with pytest.raises(TypeError, match="unhashable"):
            store.submit(Event(["not", "hashable"], 1))
        with pytest.raises(TypeError, match="pickle"):
            store.submit(Event("p", threading.Lock()))
        store.subscribe(Event("p", 1))
        store.subscribe(Event("p", 2))
        with pytest.raises(BufferFull):
            store.submit(Event("p", 3))
        assert store.metrics().published == 2
        assert store.stats().pending == 2
        store.publish()
    with pytest.raises(StoreClosed):
        store.submit(Event("p", 4))


def test_submit_under_block_times_out_like_subscribe():
    d = Dispatcher()
    d.register("slow", slow)
    with store_for(d, 1, buffer_size=1, policy=BLOCK) as store:
        first = store.submit(Event("slow", 0.5))
        with pytest.raises(TimeoutError):
            store.submit(Event("slow", 0), timeout=0.05)
        assert first.result(timeout=WAIT)
        assert store.submit(Event("slow", 0), timeout=WAIT).result(timeout=WAIT)
        assert store.metrics().published == 2


@pytest.mark.parametrize("workers", MODES)
def test_a_handler_that_cannot_travel_is_refused_before_the_event_is_taken(workers):
    lock = threading.Lock()
    d = Dispatcher()
    d.register("p", lambda ctx, ev: Result(value=lock.locked()))
    with store_for(d, workers) as store:
        if workers:
            with pytest.raises(TypeError, match="cannot be pickled"):
                store.submit(Event("p", 1))
            assert store.metrics().published == 0
        else:  # nothing travels in sync mode
            assert store.submit(Event("p", 1)).result(timeout=WAIT) == [Result(value=False)]


@pytest.mark.parametrize("workers", MODES)
def test_a_submitted_event_dropped_by_drop_oldest_completes_with_buffer_full(workers):
    """Another producer fills the ring between submit's subscribe and its publish."""
    d = Dispatcher()
    d.register("p", double)
    with store_for(d, workers, buffer_size=2, policy=DROP_OLDEST) as store:
        bus = store._bus
        real_publish = bus.publish

        def crowded_publish():
            bus.publish = real_publish
            store.subscribe(Event("p", 10))
            store.subscribe(Event("p", 20))  # the ring holds 2: the submitted event is dropped
            return real_publish()

        bus.publish = crowded_publish
        future = store.submit(Event("p", 1, id="dropped"))
        err = future.exception(timeout=WAIT)
        assert isinstance(err, BufferFull) and "DROP_OLDEST" in str(err)
        store.flush(timeout=WAIT)
        assert store.stats().dropped == 1
        assert store.metrics() == (3, 2, 0)


def test_drain_completes_the_futures_of_events_still_in_flight():
    d = Dispatcher()
    d.register("slow", slow)
    store = store_for(d, 1)
    try:
        running_future = store.submit(Event("slow", 5.0))
        queued = [store.submit(Event("slow", 5.0)) for _ in range(3)]
        time.sleep(0.3)
    finally:
        with pytest.raises(TimeoutError):
            store.drain(timeout=0.2)
    for future in [running_future, *queued]:
        assert future.done()
        assert isinstance(future.exception(timeout=0), StoreClosed)
    assert len(store.dlq) == 4


def test_drain_completes_a_submitted_event_that_was_never_published():
    d = Dispatcher()
    d.register("p", double)
    store = store_for(d, 0)
    bus = store._bus
    bus.publish = lambda: 0  # drain() begins between submit's subscribe and its publish
    future = store.submit(Event("p", 1))
    assert not future.done()
    store.drain()
    assert isinstance(future.exception(timeout=0), StoreClosed)
    (letter,) = store.dlq.entries()
    assert letter.error is future.exception()


def test_a_worker_crash_completes_the_futures_it_held_and_spares_the_rest():
    d = Dispatcher()
    d.register("die", die)
    d.register("p", double)
    with store_for(d, 1) as store:
        before = store.submit(Event("p", 1))
        assert before.result(timeout=WAIT) == [Result("double", 2)]
        crash = store.submit(Event("die", 0, id="crash"))
        err = crash.exception(timeout=WAIT)
        assert isinstance(err, WorkerCrashed) and err.exitcode == 9
        assert [le.error for le in store.dlq.entries()] == [err]
        after = store.submit(Event("p", 2))  # the replacement worker takes over
        assert after.result(timeout=WAIT) == [Result("double", 4)]


def test_a_crash_in_a_batch_handler_completes_the_future_with_worker_crashed():
    d = Dispatcher()
    d.register("p", double)
    with store_for(d, 2) as store:
        store.register_batch("p", 4, lambda ctx, events: os._exit(5))
        err = store.submit(Event("p", 1)).exception(timeout=WAIT)
        assert isinstance(err, WorkerCrashed) and err.exitcode == 5


@pytest.mark.parametrize("workers", MODES)
def test_many_threads_submitting_each_get_their_own_results(workers):
    d = Dispatcher()
    d.register("p", double, plus_one)
    with store_for(d, workers, buffer_size=64, policy=BLOCK) as store:
        got: dict[int, list[Result]] = {}

        def producer(base: int) -> None:
            futures = {i: store.submit(Event("p", i), timeout=WAIT) for i in range(base, base + 200)}
            for i, future in futures.items():
                got[i] = future.result(timeout=WAIT)

        threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 800
        assert all(r == [Result("double", i * 2), Result("plus_one", i + 1)] for i, r in got.items())


def test_sync_mode_completes_the_future_before_submit_returns_and_inside_handlers():
    d = Dispatcher()
    inner: list[Future] = []

    def outer(ctx, ev):
        inner.append(store.submit(Event("inner", ev.data)))
        return Result("outer", inner[-1].done())

    d.register("outer", outer)
    d.register("inner", double)
    store = store_for(d, 0)
    with store:
        future = store.submit(Event("outer", 4))
        assert future.done()
        assert future.result() == [Result("outer", True)]
        assert inner[0].result() == [Result("double", 8)]


def test_ctrl_c_in_a_sync_handler_still_completes_the_future():
    d = Dispatcher()

    def interrupt(ctx, ev):
        raise KeyboardInterrupt

    d.register("p", interrupt)
    store = store_for(d, 0)
    captured: list[Future] = []
    real = store._bus.publish

    def publish():
        captured.extend(s.future for s in store._bus._submitted.values())
        return real()

    store._bus.publish = publish
    with pytest.raises(KeyboardInterrupt):
        store.submit(Event("p", 1))
    assert captured and isinstance(captured[0].exception(timeout=0), KeyboardInterrupt)
    store.drain()


@pytest.mark.parametrize("workers", MODES)
def test_hooks_see_submitted_events_like_any_other(workers):
    d = Dispatcher()
    d.register("p", fail_on_three)
    with store_for(d, workers) as store:
        seen = []
        store.on_after(lambda ctx, ev, res, err: seen.append((ev.data, res.value, type(err).__name__)))
        assert store.submit(Event("p", 1)).result(timeout=WAIT) == [Result("ok", 1)]
        assert isinstance(store.submit(Event("p", 3)).exception(timeout=WAIT), ValueError)
        store.flush(timeout=WAIT)
        assert seen == [(1, 1, "NoneType"), (3, None, "ValueError")]


def test_only_submitted_events_send_their_outcomes_back():
    """Without hooks, a worker reports the outcomes of submitted events only: the 200 plain
    events of the same publishes are counted in bulk (DONE), not one record each."""
    d = Dispatcher()
    d.register("p", double, plus_one)
    with store_for(d, 2) as store:
        pool = store._bus.executor
        settled = []
        real_settle = pool.settle

        def counting_settle(job, pos, name, result, error, counted, cut=False):
            settled.append(name)
            return real_settle(job, pos, name, result, error, counted, cut)

        pool.settle = counting_settle
        futures = []
        for i in range(4):
            store.subscribe_many(Event("p", j) for j in range(50))
            futures.append(store.submit(Event("p", 1000 + i)))
        assert [f.result(timeout=WAIT) for f in futures] == [
            [Result("double", 2 * (1000 + i)), Result("plus_one", 1001 + i)] for i in range(4)]
        store.flush(timeout=WAIT)
        assert sorted(settled) == sorted(["test_submit.double", "test_submit.plus_one"] * 4)
        assert store.metrics() == (204, 408, 0)


# -- a caller waiting in result() reads the outcome itself (worker mode) ------------------------

def completing_thread(future: Future) -> list[str]:
    """The name of the thread that completes ``future`` (its callbacks run there)."""
    names: list[str] = []
    future.add_done_callback(lambda f: names.append(threading.current_thread().name))
    return names


def test_the_future_is_a_real_concurrent_future_for_wait_as_completed_and_asyncio():
    import asyncio
    from concurrent.futures import as_completed, wait

    d = Dispatcher()
    d.register("p", double)
    d.register("slow", slow)
    with store_for(d, 2) as store:
        futures = [store.submit(Event("p", i)) for i in range(20)]
        assert all(isinstance(f, Future) for f in futures)
        done, not_done = wait(futures, timeout=WAIT)
        assert not not_done and len(done) == 20
        assert sorted(f.result()[0].value for f in as_completed(futures, timeout=WAIT)) == [2 * i for i in range(20)]
        # Nobody calls result(): the collector completes the future for as_completed alone.
        late = store.submit(Event("slow", 0.1))
        assert [f.result()[0].value for f in as_completed([late], timeout=WAIT)] == [late.result()[0].value]

        async def awaited() -> list[Result]:
            return await asyncio.wrap_future(store.submit(Event("p", 21)))

        assert asyncio.run(awaited()) == [Result("double", 42)]


def test_a_caller_waiting_in_result_takes_the_outcome_in_itself(monkeypatch):
    """The waiting thread reads the worker's result channel and completes its own future; when
    its moment is over before the outcome arrives, the collector completes it as ever."""
    from busmp import _future

    d = Dispatcher()
    d.register("slow", slow)
    with store_for(d, 2) as store:
        monkeypatch.setattr(_future, "HELP_SECONDS", 5.0)
        future = store.submit(Event("slow", 0.2))
        names = completing_thread(future)
        assert future.result(timeout=WAIT)[0].value != os.getpid()
        assert names == [threading.current_thread().name]

        monkeypatch.setattr(_future, "HELP_SECONDS", 0.01)
        future = store.submit(Event("slow", 0.3))
        names = completing_thread(future)
        assert future.result(timeout=WAIT)[0].value != os.getpid()
        assert names and names[0].startswith("busmp-collector")


def test_result_and_exception_time_out_on_time_while_helping(monkeypatch):
    from busmp import _future

    d = Dispatcher()
    d.register("slow", slow)
    with store_for(d, 2) as store:
        for help_seconds in (_future.HELP_SECONDS, 5.0):  # the moment of helping shorter or longer than the timeout
            monkeypatch.setattr(_future, "HELP_SECONDS", help_seconds)
            future = store.submit(Event("slow", 1.5))
            for wait_for in (future.result, future.exception):
                started = time.monotonic()
                with pytest.raises(TimeoutError):
                    wait_for(timeout=0.25)
                assert 0.25 <= time.monotonic() - started < 1.0
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                future.result(timeout=0)
            assert time.monotonic() - started < 0.1
            assert future.result(timeout=WAIT)[0].value != os.getpid()


def wait_in_threads(future: Future, wanted: str, threads: int) -> list[object]:
    """``future.result()`` (or ``exception()``) waited for in ``threads`` threads at once."""
    got: list[object] = []

    def waiter() -> None:
        got.append(future.exception(timeout=WAIT) if wanted == "exception" else future.result(timeout=WAIT))

    started = [threading.Thread(target=waiter) for _ in range(threads)]
    for t in started:
        t.start()
    for t in started:
        t.join(WAIT)
    return got


def test_several_threads_waiting_on_one_future_all_get_its_outcome():
    d = Dispatcher()
    d.register("slow", slow)
    d.register("fails", fail_always)
    with store_for(d, 2) as store:
        future = store.submit(Event("slow", 0.2))
        got = wait_in_threads(future, "result", 6)
        assert len(got) == 6 and all(r == future.result() for r in got)
        assert future.result()[0].message == "slow"
        future = store.submit(Event("fails", 7))
        got = wait_in_threads(future, "exception", 6)
        assert len(got) == 6 and all(e is future.exception() for e in got) and isinstance(got[0], KeyError)


def test_a_caller_waiting_in_result_while_another_thread_drains_gets_store_closed():
    d = Dispatcher()
    d.register("slow", slow)
    store = store_for(d, 1)
    future = store.submit(Event("slow", 5.0))
    outcome: list[BaseException | None] = []
    waiter = threading.Thread(target=lambda: outcome.append(future.exception(timeout=WAIT)))
    waiter.start()
    time.sleep(0.2)
    with pytest.raises(TimeoutError):
        store.drain(timeout=0.2)
    waiter.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], StoreClosed)


def test_result_inside_a_hook_does_not_read_for_itself():
    """A hook runs in the thread that is reading results: waiting on a future there must not
    read again; it is a plain wait (here on the very event the hook is about, which cannot
    complete before its hooks have run: it times out)."""
    from busmp._outcomes import inside_hook

    d = Dispatcher()
    d.register("slow", slow)
    with store_for(d, 2) as store:
        pool = store._bus.executor
        helped_in_hook: list[bool] = []
        real_help = pool.help_collect

        def recording_help(done, seconds):
            helped_in_hook.append(inside_hook())
            return real_help(done, seconds)

        pool.help_collect = recording_help
        futures: list[Future] = []
        timed_out: list[bool] = []

        def hook(ctx, ev, res, err):
            try:
                futures[0].result(timeout=0.05)
            except TimeoutError:
                timed_out.append(True)

        store.on_after(hook)
        futures.append(store.submit(Event("slow", 0.2)))
        assert futures[0].result(timeout=WAIT)[0].message == "slow"
        assert timed_out == [True]
        assert helped_in_hook and not any(helped_in_hook)  # result() helped, the hook did not
