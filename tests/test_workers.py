"""Specification of worker mode: handlers run in worker processes, accounting in the parent.

Every test runs under the three start methods. Handlers that travel to workers are module-level
functions (importable by every start method) unless a test is about lambdas and closures.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import Counter, defaultdict

import psutil
import pytest

from busmp import (
    Context, DeadLetterQueue, Dispatcher, Event, EventStore, Result, with_retry,
)

from support import make_store, running, shm_blocks, wait_until

pytestmark = pytest.mark.timeout(60)

FLUSH = 20.0  # seconds: a hang fails the test instead of blocking the run


def record_after(store):
    """on_after hook collecting (event id, result value, error, pid, thread) in the parent."""
    seen = []
    store.on_after(lambda ctx, ev, res, err: seen.append(
        (ev.id, res.value, err, os.getpid(), threading.get_ident())))
    return seen


# -- handlers shipped to workers ------------------------------------------------------------

def pid_handler(ctx, ev):
    return Result(value=os.getpid())


def busy_pid_handler(ctx, ev):
    until = time.perf_counter() + 0.01
    while time.perf_counter() < until:
        pass
    return Result(value=os.getpid())


_seq = itertools.count()  # per worker process: the order handlers ran in that process


def fan_a(ctx, ev):
    return Result(value=("a", next(_seq), os.getpid()))


def fan_b(ctx, ev):
    return Result(value=("b", next(_seq), os.getpid()))


def fan_c(ctx, ev):
    return Result(value=("c", next(_seq), os.getpid()))


def batch_ids(ctx, evs):
    value = (tuple(ev.id for ev in evs), os.getpid())
    return [Result(value=value)] * len(evs)


def fail_bad(ctx, ev):
    raise ValueError("bad")


def fail_on_boom(ctx, ev):
    if ev.data == "boom":
        raise ValueError("boom")
    return Result(value=os.getpid())


_calls: Counter = Counter()  # per worker process: calls per event id


def always_fails_counting(ctx, ev):
    _calls[ev.id] += 1
    raise ValueError(f"attempt {_calls[ev.id]}")


def fails_first_time(ctx, ev):
    _calls[ev.id] += 1
    if _calls[ev.id] == 1:
        raise ValueError("first")
    return Result(value=_calls[ev.id])


def emitting(ctx, ev):
    ctx.emit(Event("next", data=ev.data, id=ev.id + "-followup"))
    return Result(value=os.getpid())


def ctx_reader(ctx, ev):
    return Result(value=(ctx.value("user"), ctx.value("n"), ctx.deadline, os.getpid()))


# -- tests ----------------------------------------------------------------------------------

def test_handlers_run_in_other_processes_and_both_workers_are_used(start_method):
    d = Dispatcher()
    d.register("p", busy_pid_handler)
    with running(make_store(d, start_method)) as store:
        seen = record_after(store)
        for i in range(16):
            store.subscribe(Event("p", id=str(i)))
        assert store.publish() == 16
        store.flush(timeout=FLUSH)
        pids = {value for _, value, _, _, _ in seen}
        assert len(seen) == 16
        assert sorted(i for i, *_ in seen) == sorted(str(i) for i in range(16))
        assert all(err is None for _, _, err, _, _ in seen)
        assert os.getpid() not in pids
        assert len(pids) == 2, f"expected both workers to be used, got pids {pids}"
        stats = store.stats()
        assert stats.workers == 2
        assert len(stats.per_worker) == 2
        assert sum(stats.per_worker) == 16, stats
        assert all(n > 0 for n in stats.per_worker), stats
        assert store.metrics() == (16, 16, 0)
        assert stats.in_flight == 0 and stats.pending == 0


def test_fan_out_order_within_an_event_is_kept_in_the_worker(start_method):
    d = Dispatcher()
    d.register("p", fan_a, fan_b)
    d.register("p", fan_c)
    with running(make_store(d, start_method)) as store:
        seen = record_after(store)
        for i in range(10):
            store.subscribe(Event("p", id=str(i)))
        store.publish()
        store.flush(timeout=FLUSH)
        per_event = defaultdict(list)
        for ev_id, value, err, _, _ in seen:
            assert err is None
            per_event[ev_id].append(value)
        assert sorted(per_event) == sorted(str(i) for i in range(10))
        for ev_id, values in per_event.items():
            # hooks replay in the order the handlers ran ...
            assert [name for name, _, _ in values] == ["a", "b", "c"], (ev_id, values)
            # ... and they did run in that order, in one worker process that is not ours
            assert len({pid for _, _, pid in values}) == 1
            assert values[0][2] != os.getpid()
            seqs = [seq for _, seq, _ in values]
            assert seqs == sorted(seqs) and len(set(seqs)) == 3, (ev_id, values)
        assert store.metrics() == (10, 30, 0)


def test_batch_handler_in_workers_gets_chunks_3_3_1(start_method):
    d = Dispatcher()
    with running(make_store(d, start_method)) as store:
        store.register_batch("b", 3, batch_ids)
        seen = record_after(store)
        ids = [f"e{i}" for i in range(7)]
        for i in ids:
            store.subscribe(Event("b", id=i))
        assert store.publish() == 7
        store.flush(timeout=FLUSH)
        assert len(seen) == 7
        assert sorted(i for i, *_ in seen) == sorted(ids)
        chunks = {value[0] for _, value, _, _, _ in seen}
        assert sorted(len(c) for c in chunks) == [1, 3, 3]
        assert sorted(chunks) == sorted([tuple(ids[0:3]), tuple(ids[3:6]), tuple(ids[6:7])])
        # every event got the result of the chunk it was in
        for ev_id, (chunk, pid), err, _, _ in seen:
            assert err is None and ev_id in chunk and pid != os.getpid()
        assert store.metrics() == (7, 7, 0)


def test_hooks_fire_in_the_parent_process(start_method):
    d = Dispatcher()
    d.register("ok", pid_handler)
    d.register("bad", fail_bad)
    calls = []
    with running(make_store(d, start_method)) as store:
        store.on_before(lambda ctx, ev: calls.append(("before", ev.id, os.getpid())))
        store.on_after(lambda ctx, ev, res, err: calls.append(("after", ev.id, os.getpid(), res.value, err)))
        store.on_error(lambda ctx, ev, err: calls.append(("error", ev.id, os.getpid(), err)))
        store.subscribe(Event("ok", id="1"))
        store.subscribe(Event("bad", id="2"))
        store.subscribe(Event("ok", id="3"))
        store.publish()
        store.flush(timeout=FLUSH)
    me = os.getpid()
    assert all(call[2] == me for call in calls), calls
    assert sorted(c[1] for c in calls if c[0] == "before") == ["1", "2", "3"]
    after = {c[1]: c for c in calls if c[0] == "after"}
    assert sorted(after) == ["1", "2", "3"]
    assert after["1"][3] not in (None, me) and after["1"][4] is None
    assert after["3"][3] not in (None, me) and after["3"][4] is None
    assert isinstance(after["2"][4], ValueError) and str(after["2"][4]) == "bad"
    errors = [c for c in calls if c[0] == "error"]
    assert len(errors) == 1 and errors[0][1] == "2"
    assert isinstance(errors[0][3], ValueError) and str(errors[0][3]) == "bad"
    # before precedes after for every event
    for ev_id in ("1", "2", "3"):
        kinds = [c[0] for c in calls if c[1] == ev_id]
        assert kinds.index("before") < kinds.index("after")


def test_dead_letter_from_a_worker(start_method):
    d = Dispatcher()
    d.register("p", fail_bad)
    with running(make_store(d, start_method)) as store:
        ev = Event("p", data={"k": 1}, id="x1")
        store.subscribe(ev)
        store.publish()
        store.flush(timeout=FLUSH)
        letters = store.dlq.entries()
        assert len(letters) == 1
        letter = letters[0]
        assert type(letter.error) is ValueError
        assert str(letter.error) == "bad"
        assert letter.attempts == 1
        assert "fail_bad" in letter.handler
        assert letter.event == ev
        assert letter.failed_at.tzinfo is not None
        assert store.metrics() == (1, 1, 1)
        assert store.stats().dead_letters == 1


def test_lambdas_closures_and_closure_middleware_in_workers(start_method):
    factor = 7
    tag = f"tag-{start_method}"

    def closure(ctx, ev):
        return Result(value=(ev.data * factor, os.getpid()))

    def tagging(handler):
        def wrapped(ctx, ev):
            inner = handler(ctx, ev)
            return Result(value=(tag, inner.value))
        return wrapped

    d = Dispatcher()
    d.register("lam", lambda ctx, ev: Result(value=(ev.data + 1, os.getpid())))
    d.register("clo", closure)
    with running(make_store(d, start_method)) as store:
        store.use(tagging)
        seen = record_after(store)
        store.subscribe(Event("lam", data=1, id="lam"))
        store.subscribe(Event("clo", data=3, id="clo"))
        store.publish()
        store.flush(timeout=FLUSH)
        values = {ev_id: (value, err) for ev_id, value, err, _, _ in seen}
        assert values["lam"][1] is None and values["clo"][1] is None
        assert values["lam"][0][0] == tag and values["lam"][0][1][0] == 2
        assert values["clo"][0][0] == tag and values["clo"][0][1][0] == 21
        assert values["lam"][0][1][1] != os.getpid()
        assert values["clo"][0][1][1] != os.getpid()
        assert store.metrics() == (2, 2, 0)


def test_with_retry_runs_in_the_worker(start_method):
    d = Dispatcher()
    d.register("always", always_fails_counting)
    d.register("flaky", fails_first_time)
    with running(make_store(d, start_method, workers=1)) as store:
        store.use(with_retry(2))
        seen = record_after(store)
        store.subscribe(Event("always", id=f"always-{start_method}"))
        store.subscribe(Event("flaky", id=f"flaky-{start_method}"))
        store.publish()
        store.flush(timeout=FLUSH)
        letters = store.dlq.entries()
        assert len(letters) == 1
        assert letters[0].event.id == f"always-{start_method}"
        assert str(letters[0].error) == "attempt 3"  # retries + 1 calls, in one worker
        assert letters[0].attempts == 1
        assert "always_fails_counting" in letters[0].handler
        flaky = [value for ev_id, value, err, _, _ in seen if ev_id == f"flaky-{start_method}"]
        assert flaky == [2]
        assert store.metrics() == (2, 2, 1)


def test_registration_after_start_reaches_the_workers(start_method):
    d = Dispatcher()
    d.register("a", pid_handler)
    with running(make_store(d, start_method)) as store:
        seen = record_after(store)
        store.subscribe(Event("a", id="a1"))
        store.publish()
        store.flush(timeout=FLUSH)
        assert [i for i, *_ in seen] == ["a1"]

        d.register("b", fan_b)               # a new projection
        d.register("a", fan_a)               # a second handler for a known one
        store.register_batch("c", 2, batch_ids)  # a batch handler
        store.subscribe(Event("b", id="b1"))
        store.subscribe(Event("a", id="a2"))
        store.subscribe(Event("c", id="c1"))
        store.publish()
        store.flush(timeout=FLUSH)
        by_id = defaultdict(list)
        for ev_id, value, err, _, _ in seen:
            assert err is None
            by_id[ev_id].append(value)
        assert by_id["b1"][0][0] == "b" and by_id["b1"][0][2] != os.getpid()
        assert len(by_id["a2"]) == 2 and by_id["a2"][1][0] == "a"
        assert by_id["c1"] == [(("c1",), by_id["c1"][0][1])] and by_id["c1"][0][1] != os.getpid()
        assert store.metrics() == (4, 5, 0)


def test_emit_from_a_worker_handler_is_handled_and_flushed(start_method):
    d = Dispatcher()
    d.register("start", emitting)
    d.register("next", pid_handler)
    with running(make_store(d, start_method)) as store:
        seen = record_after(store)
        store.subscribe(Event("start", data=5, id="s"))
        store.publish()
        store.flush(timeout=FLUSH)
        ids = [i for i, *_ in seen]
        assert sorted(ids) == ["s", "s-followup"]
        follow = [value for ev_id, value, err, _, _ in seen if ev_id == "s-followup"]
        assert follow[0] != os.getpid()
        assert store.metrics() == (2, 2, 0)
        stats = store.stats()
        assert stats.in_flight == 0 and stats.pending == 0


def test_context_values_reach_the_worker_handler(start_method):
    d = Dispatcher()
    d.register("p", ctx_reader)
    deadline = time.time() + 3600
    with running(make_store(d, start_method)) as store:
        seen_ctx = []
        store.on_after(lambda ctx, ev, res, err: seen_ctx.append((ctx.value("user"), res.value, err)))
        ctx = Context({"user": "alice", "n": 3}, deadline=deadline)
        store.subscribe(Event("p", id="1"), ctx)
        store.subscribe(Event("p", id="2"))
        store.publish()
        store.flush(timeout=FLUSH)
        by_user = {user: (value, err) for user, value, err in seen_ctx}
        assert by_user["alice"][1] is None
        assert by_user["alice"][0][:3] == ("alice", 3, deadline)
        assert by_user["alice"][0][3] != os.getpid()
        assert by_user[None][0][:3] == (None, None, None)


def test_transaction_commit_and_past_schedule_in_worker_mode(start_method):
    d = Dispatcher()
    d.register("p", fail_on_boom)
    with running(make_store(d, start_method)) as store:
        seen = record_after(store)
        store.subscribe(Event("p", data="other", id="other"))  # another producer's, unpublished
        tx = store.begin_transaction()
        tx.publish(Event("p", data="ok", id="t1"))
        tx.publish(Event("p", data="boom", id="t2"))
        tx.publish(Event("p", data="ok", id="t3"))
        with pytest.raises(ValueError, match="boom"):
            tx.commit()
        # exactly the committed events were handled, in order, before commit returned
        assert [i for i, *_ in seen] == ["t1", "t2", "t3"]
        assert isinstance(seen[1][2], ValueError)
        assert store.stats().pending == 1
        assert [letter.event.id for letter in store.dlq.entries()] == ["t2"]

        assert store.schedule(time.time() - 5, Event("p", data="ok", id="sched")) is None
        assert [i for i, *_ in seen][-1] == "sched"  # handled before schedule() returned
        assert seen[-1][2] is None and seen[-1][1] != os.getpid()

        store.publish()
        store.flush(timeout=FLUSH)
        assert [i for i, *_ in seen][-1] == "other"
        assert store.metrics() == (5, 5, 1)


def test_drain_releases_shared_memory_and_worker_processes(start_method):
    before = shm_blocks()
    d = Dispatcher()
    d.register("p", busy_pid_handler)
    store = make_store(d, start_method)
    seen = record_after(store)
    assert shm_blocks() - before, "a worker-mode store should hold shared memory"
    for i in range(8):
        store.subscribe(Event("p", id=str(i)))
    store.publish()
    store.flush(timeout=FLUSH)
    pids = {value for _, value, _, _, _ in seen}
    assert pids and os.getpid() not in pids
    assert all(psutil.pid_exists(pid) for pid in pids)
    store.drain(timeout=FLUSH)
    assert "closed" in repr(store)
    assert shm_blocks() - before == set()
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), 2), pids
    store.drain()  # idempotent
    # the counters stay readable after drain
    assert store.metrics() == (8, 8, 0)
    stats = store.stats()
    assert (stats.published, stats.processed, stats.in_flight, stats.pending) == (8, 8, 0, 0)


def slow_id_handler(ctx, ev):
    time.sleep(0.05)
    return Result(value=ev.id)


def test_drop_oldest_never_discards_what_a_worker_holds(start_method):
    """A ring full of handed-off events makes DROP_OLDEST wait for the worker; only
    *pending* events are ever dropped."""
    d = Dispatcher()
    d.register("p", slow_id_handler)
    store = EventStore(d, 4, workers=1, dlq=DeadLetterQueue(), start_method=start_method)
    held = [f"held{i}" for i in range(4)]
    later = [f"next{i}" for i in range(6)]
    with running(store):
        seen = record_after(store)
        for ev_id in held:
            store.subscribe(Event("p", id=ev_id))
        assert store.publish() == 4  # every slot now belongs to the worker
        store.subscribe(Event("p", id=later[0]), timeout=FLUSH)  # nothing pending: waits, drops nothing
        assert store.stats().dropped == 0
        for ev_id in later[1:]:  # now there are pending events, and those may be dropped
            store.subscribe(Event("p", id=ev_id), timeout=FLUSH)
        store.publish()
        store.flush(timeout=FLUSH)
        handled = [ev_id for ev_id, _, err, _, _ in seen if err is None]
        stats = store.stats()
    assert set(held) <= set(handled)
    assert later[-1] in handled  # the newest is never the one dropped
    assert stats.dropped == len(held) + len(later) - len(handled) > 0
    assert store.metrics() == (len(held) + len(later), len(handled), 0)


def test_chunked_subscribe_many_in_workers_keeps_per_event_accounting(start_method):
    """subscribe_many shares slots between events; workers still report event by event."""
    d = Dispatcher()
    d.register("p", pid_handler)
    store = make_store(d, start_method)
    with running(store):
        store.register_batch("p", 7, batch_ids)
        calls = Counter()
        store.on_after(lambda ctx, ev, res, err: calls.update([(ev.id, err is None)]))
        ids = [f"c{i}" for i in range(100)]
        assert store.subscribe_many(Event("p", id=i) for i in ids) == 100
        assert store.publish() == 100
        store.flush(timeout=FLUSH)
        assert calls == Counter({(i, True): 2 for i in ids})  # one per-event, one batch outcome
        assert store.metrics() == (100, 200, 0)
        assert store.stats().free_slots == store.stats().slots


def test_threads_flushing_at_once_all_return_with_every_outcome_taken_in_once(start_method):
    """flush() reads results itself for a moment while the collector thread may read too:
    whoever reads, each outcome is taken in exactly once and every waiter returns."""
    d = Dispatcher()
    d.register("p", busy_pid_handler)
    store = make_store(d, start_method)
    with running(store):
        seen = record_after(store)
        errors = []

        def publish_and_flush(k):
            try:
                for n in range(5):
                    store.subscribe_many(Event("p", id=f"t{k}-{n}-{i}") for i in range(4))
                    store.publish()
                    store.flush(timeout=FLUSH)
            except BaseException as exc:  # reported below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=publish_and_flush, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(FLUSH)
        assert not errors and not any(t.is_alive() for t in threads)
        ids = [ev_id for ev_id, *_ in seen]
        assert len(ids) == 80 and len(set(ids)) == 80
        assert store.metrics() == (80, 80, 0)
        assert store.stats().in_flight == 0 and store.stats().free_slots == store.stats().slots


def test_a_worker_process_starts_without_numpy_cloudpickle_psutil_or_the_store():
    """What a spawned worker imports is its start-up time: ~100 ms for numpy alone."""
    import subprocess
    import sys

    code = ("import sys, busmp._workers.worker; "
            "print(sorted(m for m in ('numpy', 'cloudpickle', 'psutil', 'busmp._store', 'busmp._workers.pool') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_routes_travel_without_the_planners_numpy_caches():
    import pickle

    from busmp._dispatch import async_projections
    from busmp._dispatch import Routes
    from busmp._workers.jobs import _handler_hashes

    routes = Routes(handlers={"p": (print,), "none": ()})
    assert len(_handler_hashes(routes)) == 1  # the planner caches a numpy array on the routes
    assert routes.handler_hashes() == {hash("p")} and routes.hash_array is not None
    assert async_projections(routes) == frozenset() and routes.async_set is not None
    assert b"numpy" not in pickle.dumps(routes, 5)
    travelled = pickle.loads(pickle.dumps(routes, 5))
    assert travelled.chains("p")[0][1].endswith("print")
    assert travelled.hash_set is None and travelled.hash_array is None and travelled.async_set is None
    assert travelled == Routes(handlers={"p": (print,), "none": ()})  # caches take no part in equality
