"""Specification of the Ray backend: ``EventStore(d, workers=N, backend="ray")``.

The store's contract holds unchanged with handlers in Ray actors: fan-out order, batch
handlers, middleware (in the actors), hooks, DLQ and metrics (in the parent), ``ctx.emit``,
back-pressure, transactions, flush and drain; a dying actor's events become ``WorkerCrashed``
dead letters and a new actor takes over. The tests run against a real local Ray cluster with
two CPUs, started once for the module (Ray starts in seconds, not milliseconds).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil
import pytest
from support import hangs_in_batch, hangs_on_hang, second_step

from busmp import (
    BLOCK, BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore, Result, StoreClosed, WorkerCrashed,
)

try:
    import ray
except ImportError:  # the Ray extra is not installed: the Ray specs are skipped, the rest run
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="Ray is not installed (pip install 'busmp[ray]')")
pytestmark = pytest.mark.timeout(120)

FLUSH = 30.0
PARENT = os.getpid()


@pytest.fixture(scope="module")
def cluster():
    """A local two-CPU Ray cluster for the module; shut down after it, so that the other
    modules' forked workers do not inherit Ray's threads."""
    if ray is None:
        pytest.skip("Ray is not installed (pip install 'busmp[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 1024 * 1024,
             configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture
def make(cluster):
    """``make(dispatcher, **options)``: a Ray store with two actors and a DLQ, drained after the test."""
    stores = []

    def build(dispatcher, buffer_size=1 << 10, workers=2, **options):
        store = EventStore(dispatcher, buffer_size, workers=workers, dlq=DeadLetterQueue(), backend="ray",
                           **options)
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.drain(timeout=FLUSH)


def outcomes(store):
    """(event data, result value, error) per outcome, as the parent's on_after hook sees them."""
    seen = []
    store.on_after(lambda ctx, ev, res, err: seen.append((ev.data, res.value, err)))
    return seen


def tagged(tag):
    def handler(ctx, event):
        return Result(value=(tag, os.getpid()))
    handler.__name__ = handler.__qualname__ = f"handler_{tag}"
    return handler


class Refused(Exception):
    """A handler's own exception type, which must reach the DLQ as itself."""


def refuse_odd(ctx, event):
    if event.data % 2:
        raise Refused(f"odd {event.data}")
    return Result(value=event.data)


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(predicate, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- arguments --------------------------------------------------------------------------
def test_unknown_backend_and_workers_zero_are_value_errors():
    with pytest.raises(ValueError, match="backend must be one of"):
        EventStore(Dispatcher(), workers=1, backend="threads")
    with pytest.raises(ValueError, match="workers=N"):
        EventStore(Dispatcher(), workers=0, backend="ray")
    with pytest.raises(ValueError, match="backend='ray' only"):
        EventStore(Dispatcher(), workers=1, ray_actor_options={"num_cpus": 1})


def test_without_ray_the_error_names_the_extra_after_the_arguments_are_checked(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees where Ray is not installed
    with pytest.raises(ValueError, match="workers=N"):
        EventStore(Dispatcher(), workers=0, backend="ray")
    with pytest.raises(ImportError, match=r"pip install 'busmp\[ray\]'"):
        EventStore(Dispatcher(), workers=2, backend="ray")


def test_busmp_without_the_ray_backend_never_imports_ray():
    script = textwrap.dedent("""
        import sys
        import busmp
        from busmp import Dispatcher, Event, EventStore
        d = Dispatcher()
        d.register("a", lambda ctx, e: None)
        with EventStore(d, workers=1) as store:
            store.subscribe(Event("a"))
            store.publish()
        assert "ray" not in sys.modules, "busmp imported ray"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@needs_ray
def test_actor_options_that_would_rerun_events_are_refused():
    with pytest.raises(ValueError, match="never runs an event twice"):
        EventStore(Dispatcher(), workers=1, backend="ray", ray_actor_options={"max_task_retries": 2})
    with pytest.raises(TypeError, match="must be a dict"):
        EventStore(Dispatcher(), workers=1, backend="ray", ray_actor_options=[("num_cpus", 1)])


# -- the pipeline ----------------------------------------------------------------------
def test_fan_out_runs_in_actors_in_registration_order_with_hooks_in_the_parent(make):
    d = Dispatcher()
    d.register("a", tagged("first"), tagged("second"), tagged("third"))
    store = make(d)
    seen, hook_threads = [], set()

    def after(ctx, ev, res, err):
        hook_threads.add((os.getpid(), threading.current_thread().name))
        seen.append((ev.data, res.value, err))

    store.on_after(after)
    store.subscribe_many([Event("a", i) for i in range(300)])
    for i in range(300, 320):
        store.subscribe(Event("a", i))
    assert store.publish() == 320
    store.flush(FLUSH)

    by_event = {}
    for data, value, err in seen:
        assert err is None
        by_event.setdefault(data, []).append(value)
    assert sorted(by_event) == list(range(320))
    for values in by_event.values():
        assert [tag for tag, _ in values] == ["first", "second", "third"]
        assert values[0][1] != PARENT  # the handlers ran in an actor
    assert {pid for pid, _ in hook_threads} == {PARENT}
    assert all(name.startswith("busmp-ray-collector-") for _, name in hook_threads)
    assert store.metrics() == (320, 960, 0)
    assert sum(store.stats().per_worker) == 320
    assert len(store.stats().per_worker) == 2


def test_failures_reach_the_dlq_with_the_handlers_exception_type(make):
    d = Dispatcher()
    d.register("n", refuse_odd)
    store = make(d)
    errors = []
    store.on_error(lambda ctx, ev, err: errors.append((ev.data, type(err))))
    store.subscribe_many([Event("n", i) for i in range(100)])
    store.publish()
    store.flush(FLUSH)
    letters = store.dlq.entries()
    assert sorted(letter.event.data for letter in letters) == list(range(1, 100, 2))
    assert {type(letter.error) for letter in letters} == {Refused}
    assert all(letter.handler.endswith("refuse_odd") for letter in letters)
    assert sorted(errors) == [(i, Refused) for i in range(1, 100, 2)]
    assert store.metrics() == (100, 100, 50)


def test_batch_handlers_get_chunks_of_at_most_their_size(make):
    d = Dispatcher()
    store = make(d)

    def batch(ctx, events):
        return [Result(value=(len(events), os.getpid())) for _ in events]

    store.register_batch("b", 7, batch)
    seen = outcomes(store)
    store.subscribe_many([Event("b", i) for i in range(50)])
    store.publish()
    store.flush(FLUSH)
    assert sorted(data for data, _, _ in seen) == list(range(50))
    assert all(1 <= size <= 7 and pid != PARENT for _, (size, pid), _ in seen)
    assert store.metrics() == (50, 50, 0)


def test_a_failed_batch_call_is_a_dead_letter_per_event(make):
    d = Dispatcher()
    store = make(d)

    def batch(ctx, events):
        raise Refused(f"{len(events)} events")

    store.register_batch("b", 4, batch)
    store.subscribe_many([Event("b", i) for i in range(10)])
    store.publish()
    store.flush(FLUSH)
    assert sorted(letter.event.data for letter in store.dlq.entries()) == list(range(10))
    assert {type(letter.error) for letter in store.dlq.entries()} == {Refused}
    assert store.metrics() == (10, 10, 10)


def test_middleware_wraps_each_handler_in_the_actor(make):
    d = Dispatcher()
    d.register("m", tagged("plain"))
    store = make(d)

    def outer(handler):
        def wrapped(ctx, event):
            result = handler(ctx, event)
            return Result(value=("outer", os.getpid(), result.value))
        return wrapped

    store.use(outer)
    seen = outcomes(store)
    store.subscribe(Event("m", 1))
    store.publish()
    store.flush(FLUSH)
    [(_, (name, pid, inner), err)] = seen
    assert err is None and name == "outer" and inner[0] == "plain"
    assert pid == inner[1] != PARENT


def test_emitted_follow_ups_are_handled_and_counted(make):
    d = Dispatcher()

    def split(ctx, event):
        for part in range(3):
            ctx.emit(Event("part", (event.data, part)))

    d.register("whole", split)
    d.register("part", lambda ctx, event: Result(value=event.data))
    store = make(d)
    seen = outcomes(store)
    store.subscribe_many([Event("whole", i) for i in range(20)])
    store.publish()
    store.flush(FLUSH)
    parts = sorted(value for data, value, _ in seen if isinstance(data, tuple))
    assert parts == [(i, p) for i in range(20) for p in range(3)]
    assert store.metrics() == (80, 80, 0)


def doubles(ctx, event):
    ctx.emit(Event("storm", event.data + 1))
    ctx.emit(Event("storm", event.data + 1))


def test_a_doubling_storm_in_the_actors_is_cut_off_by_max_followups_and_dies_down(make):
    d = Dispatcher()
    d.register("storm", doubles)
    limit = 200
    store = make(d, max_followups=limit)
    store.subscribe(Event("storm", 0))
    store.publish()
    store.flush(FLUSH)  # without the cut-off in the actors the storm doubles for ever
    published, processed, errors = store.metrics()
    letters = store.dlq.entries()
    assert letters and all(isinstance(letter.error, BufferFull) and "max_followups" in str(letter.error)
                           for letter in letters)
    assert processed == published and errors == len(letters)
    assert published < 20 * limit  # over the cap by what the calls in flight emit, not more
    assert store._bus.followups == 0 and store.stats().in_flight == 0
    store.dlq.drain()
    store.subscribe(Event("storm", 10**6))  # the storm is over: emit goes through again
    store.publish()
    store.flush(FLUSH)
    assert store.metrics()[0] > published + 1


def test_a_lambda_handler_travels_by_value(make):
    d = Dispatcher()
    offset = 1000
    d.register("l", lambda ctx, event: Result(value=event.data + offset))
    store = make(d, workers=1)
    seen = outcomes(store)
    store.subscribe(Event("l", 1))
    store.publish()
    store.flush(FLUSH)
    assert [value for _, value, _ in seen] == [1001]


def test_numpy_payloads_arrive_whole(make):
    d = Dispatcher()
    d.register("np", lambda ctx, event: Result(value=float(event.data.sum())))
    store = make(d)
    seen = outcomes(store)
    arrays = [np.arange(100_000, dtype=np.float64) * i for i in range(4)]  # out of band: 800 KB each
    for i, array in enumerate(arrays):
        store.subscribe(Event("np", array, id=str(i)))
    store.publish()
    store.flush(FLUSH)
    assert sorted(value for _, value, _ in seen) == sorted(float(a.sum()) for a in arrays)


def test_routes_registered_later_reach_the_actors_at_the_next_publish(make):
    d = Dispatcher()
    d.register("r", tagged("one"))
    store = make(d)
    seen = outcomes(store)
    store.subscribe(Event("r", 1))
    store.publish()
    store.flush(FLUSH)
    d.register("r", tagged("two"))
    store.subscribe(Event("r", 2))
    store.publish()
    store.flush(FLUSH)
    assert [(data, value[0]) for data, value, _ in seen] == [(1, "one"), (2, "one"), (2, "two")]


def test_a_handler_that_cannot_travel_is_refused_at_publish(make):
    d = Dispatcher()
    lock = threading.Lock()
    d.register("x", lambda ctx, event: lock)
    store = make(d, workers=1)
    store.subscribe(Event("x"))
    with pytest.raises(TypeError, match="cannot be pickled"):
        store.publish()
    store.flush(FLUSH)


# -- groups, back-pressure, closing ------------------------------------------------------
def test_a_transaction_is_handled_in_order_and_raises_the_first_failure(make):
    d = Dispatcher()
    d.register("t", lambda ctx, event: Result(value=(event.data, time.monotonic_ns())))
    d.register("n", refuse_odd)
    store = make(d)
    seen = outcomes(store)
    with store.begin_transaction() as tx:
        for i in range(30):
            tx.publish(Event("t", i))
    assert [data for data, _, _ in seen] == list(range(30))
    stamps = [value[1] for _, value, _ in seen]
    assert stamps == sorted(stamps)

    tx = store.begin_transaction()
    for i in range(4):
        tx.publish(Event("n", i))
    with pytest.raises(Refused, match="odd 1"):
        tx.commit()
    assert sorted(letter.event.data for letter in store.dlq.entries()) == [1, 3]


def test_block_makes_subscribe_wait_while_actors_hold_every_slot(make):
    d = Dispatcher()
    d.register("s", lambda ctx, event: time.sleep(0.2))
    store = make(d, buffer_size=4, policy=BLOCK)
    for i in range(4):
        store.subscribe(Event("s", i))
    store.publish()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        store.subscribe(Event("s", 4), timeout=0.05)  # every slot is in an actor's call
    store.subscribe(Event("s", 5))  # waits until a call returns and frees its slots
    assert time.monotonic() - started >= 0.1
    store.publish()
    store.flush(FLUSH)
    assert store.metrics() == (5, 5, 0)


def test_drain_kills_the_actors_and_leaves_a_joined_cluster_running(make, cluster):
    d = Dispatcher()
    d.register("p", lambda ctx, event: Result(value=os.getpid()))
    store = EventStore(d, workers=2, backend="ray")
    seen = outcomes(store)
    store.subscribe_many([Event("p", i) for i in range(64)])
    store.publish()
    store.drain(timeout=FLUSH)
    pids = {value for _, value, _ in seen}
    assert len(seen) == 64 and PARENT not in pids
    assert wait_until(lambda: all(gone(pid) for pid in pids), 20), "an actor outlived drain()"
    assert ray.is_initialized()
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p"))


def test_an_abandoned_store_kills_its_actors(cluster):
    d = Dispatcher()
    d.register("p", lambda ctx, event: Result(value=os.getpid()))
    store = EventStore(d, workers=1, backend="ray")
    seen = outcomes(store)
    store.subscribe(Event("p"))
    store.publish()
    store.flush(FLUSH)
    [(_, pid, _)] = seen
    del store
    assert wait_until(lambda: gone(pid), 20), "the actor of a store collected undrained lives on"


# -- faults ------------------------------------------------------------------------------
def die_on_seven(ctx, event):
    if event.data == 7:
        os.kill(os.getpid(), 9)
    return Result(value=os.getpid())


def exit_on_seven(ctx, event):
    if event.data == 7:
        os._exit(3)
    return Result(value=os.getpid())


@pytest.mark.parametrize("handler", [die_on_seven, exit_on_seven])
def test_a_dying_actor_turns_exactly_its_events_into_dead_letters_and_is_replaced(make, handler):
    d = Dispatcher()
    d.register("k", handler)
    store = make(d)
    seen = outcomes(store)
    events = 200
    store.subscribe_many([Event("k", i) for i in range(events)])
    store.publish()
    store.flush(FLUSH)

    handled = [data for data, _, err in seen if err is None]
    crashed = [letter for letter in store.dlq.entries()]
    assert len(handled) == len(set(handled))
    assert {type(letter.error) for letter in crashed} == {WorkerCrashed}
    dead = [letter.event.data for letter in crashed]
    assert len(dead) == len(set(dead)) and not set(dead) & set(handled)  # never both
    assert sorted(handled + dead) == list(range(events))                    # nothing lost
    assert 7 in dead
    victim = next(letter.error for letter in crashed if letter.event.data == 7)
    assert victim.pid > 0 and victim.pid != PARENT and victim.exitcode is None
    assert store.metrics() == (events, events, len(dead))

    # A new actor took the dead one's place: the store goes on with two.
    more = outcomes(store)
    store.subscribe_many([Event("k", 1000 + i) for i in range(40)])
    store.publish()
    store.flush(FLUSH)
    assert sorted(data for data, _, err in more if err is None) == [1000 + i for i in range(40)]
    assert victim.pid not in {value for _, value, _ in more}
    assert len(store.stats().per_worker) == 2


def may_raise_priority():
    import resource

    return os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - os.nice(0)


def test_actors_run_at_the_stores_niceness_not_rays_default(make):
    if not may_raise_priority():
        pytest.skip("an actor may not raise its priority here (no root, CAP_SYS_NICE or RLIMIT_NICE)")
    d = Dispatcher()
    d.register("n", lambda ctx, event: Result(value=os.getpriority(os.PRIO_PROCESS, 0)))
    store = make(d)
    seen = outcomes(store)
    store.subscribe_many([Event("n", i) for i in range(8)])
    store.publish()
    store.flush(FLUSH)
    assert {value for _, value, _ in seen} == {os.getpriority(os.PRIO_PROCESS, 0)}  # Ray's is 15


# -- handler_timeout ---------------------------------------------------------------------
def actor_pids(store):
    return [slot.pid for slot in store._bus.executor.actors]


def test_a_call_past_handler_timeout_kills_its_actor_and_the_rest_is_handled_once(make):
    d = Dispatcher()
    d.register("p", hangs_on_hang, second_step)
    store = make(d, handler_timeout=0.3)
    calls = collections.Counter()
    store.on_after(lambda ctx, ev, res, err: calls.update([(ev.id, type(err).__name__ if err else None)]))
    n = 200
    before = actor_pids(store)
    # Events before "hang" run in the same call: what they reported is settled, not lost.
    store.subscribe_many([*(Event("p", id=str(i)) for i in range(5)), Event("p", id="hang"),
                          *(Event("p", id=str(i)) for i in range(5, n))])
    started = time.monotonic()
    store.publish()
    store.flush(FLUSH)
    assert time.monotonic() - started < 10
    letters = sorted(store.dlq.entries(), key=lambda letter: letter.handler)
    assert [(letter.event.id, letter.handler.rsplit(".", 1)[-1], type(letter.error)) for letter in letters] == [
        ("hang", "hangs_on_hang", TimeoutError), ("hang", "second_step", WorkerCrashed)]
    assert "hangs_on_hang ran past handler_timeout=0.3 s; its Ray actor" in str(letters[0].error)
    assert calls == {("hang", "TimeoutError"): 1, ("hang", "WorkerCrashed"): 1,
                     **{(str(i), None): 2 for i in range(n)}}  # the unstarted ones ran elsewhere, once
    assert store.metrics() == (n + 1, 2 * (n + 1), 2)
    assert wait_until(lambda: None not in actor_pids(store), 30)
    assert len(set(actor_pids(store)) - set(before)) == 1  # one actor killed and replaced
    stats = store.stats()
    assert stats.in_flight == 0 and stats.free_slots == stats.slots


def test_a_context_deadline_past_in_an_actor_counts_the_same_without_hooks(make):
    from busmp import Context

    d = Dispatcher()
    d.register("p", hangs_on_hang)
    store = make(d, handler_timeout=60)
    store.subscribe_many([Event("p", id=str(i)) for i in range(3)])
    store.subscribe(Event("p", id="hang"), Context().with_timeout(0.3))
    store.subscribe_many([Event("p", id=str(i)) for i in range(3, 6)])
    store.publish()
    store.flush(FLUSH)
    (letter,) = store.dlq.entries()
    assert letter.event.id == "hang" and isinstance(letter.error, TimeoutError)
    assert "ran past its context's deadline" in str(letter.error)
    assert store.metrics() == (7, 7, 1)  # the quiet successes before it in its call are counted once


def test_a_batch_call_past_handler_timeout_is_a_timeout_for_each_of_its_events(make):
    d = Dispatcher()
    store = make(d, handler_timeout=0.3)
    store.register_batch("b", 4, hangs_in_batch)
    store.subscribe_many([Event("b", id=str(i)) for i in range(4)])
    store.publish()
    store.flush(FLUSH)
    letters = store.dlq.entries()
    assert sorted(letter.event.id for letter in letters) == ["0", "1", "2", "3"]
    assert all(isinstance(letter.error, TimeoutError) and "hangs_in_batch" in letter.handler for letter in letters)
    assert store.metrics() == (4, 4, 4)


# -- programs ----------------------------------------------------------------------------
MAIN_PROGRAM = """
import sys
import ray
from busmp import Dispatcher, Event, EventStore, Result

class Doubler:  # defined in __main__, which no actor can import
    factor = 2

def double(ctx, event):
    return Result(value=event.data * Doubler.factor)

if __name__ == "__main__":
    d = Dispatcher()
    d.register("x", double)
    first = EventStore(d, workers=1, backend="ray", ray_actor_options={"num_cpus": 0.5})
    second = EventStore(d, workers=1, backend="ray", ray_actor_options={"num_cpus": 0.5})
    values = []
    first.on_after(lambda ctx, ev, res, err: values.append((res.value, err)))
    first.subscribe(Event("x", 21))
    first.publish()
    first.drain(timeout=60)
    print("after first drain", ray.is_initialized())
    second.drain(timeout=60)
    print("after last drain", ray.is_initialized())
    print("values", values)
"""


@needs_ray
def test_a_program_with_handlers_in_main_on_a_cluster_busmp_starts_and_stops(tmp_path):
    script = tmp_path / "program.py"
    script.write_text(MAIN_PROGRAM)
    env = {**os.environ, "RAY_ADDRESS": "local"}  # not the module's cluster: busmp starts one
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110,
                          env=env, cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert "after first drain True" in lines, done.stdout + done.stderr
    assert "after last drain False" in lines, done.stdout + done.stderr
    assert "values [(42, None)]" in lines, done.stdout + done.stderr


# -- statistics --------------------------------------------------------------------------
def test_stats_count_per_actor(make):
    d = Dispatcher()
    d.register("s", lambda ctx, event: time.sleep(0.001))
    store = make(d, buffer_size=1 << 12)
    store.subscribe_many([Event("s", i) for i in range(2000)])
    store.publish()
    store.flush(FLUSH)
    stats = store.stats()
    assert stats.workers == 2 and len(stats.per_worker) == 2
    assert sum(stats.per_worker) == 2000 and min(stats.per_worker) > 0
    assert stats.in_flight == 0 and stats.pending == 0 and stats.free_slots == stats.slots


def test_the_example_exits_cleanly_naming_the_extra_where_ray_is_missing():
    example = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "ray_backend.py")
    script = f"import sys, runpy; sys.modules['ray'] = None; runpy.run_path({example!r}, run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'busmp[ray]'" in done.stdout


def test_a_named_stores_shared_statistics_show_each_actor(make):
    from busmp import read_stats

    d = Dispatcher()
    d.register("s", lambda ctx, event: None)
    store = make(d, name="ray-stats")
    store.subscribe_many([Event("s", i) for i in range(500)])
    store.publish()
    store.flush(FLUSH)
    shared = read_stats("ray-stats")
    assert shared.per_worker == store.stats().per_worker
    assert sum(shared.per_worker) == 500


_overlap = {"now": 0, "most": 0}  # in an actor: how many async handlers await at once


async def overlapping(ctx, event):
    import asyncio

    _overlap["now"] += 1
    _overlap["most"] = max(_overlap["most"], _overlap["now"])
    await asyncio.sleep(0.05)
    _overlap["now"] -= 1
    return Result(value=(event.data * 2, _overlap["most"]))


def test_async_def_handlers_are_awaited_in_the_actor_and_overlap_within_a_call(make):
    d = Dispatcher()
    d.register("a", overlapping)
    store = make(d, workers=1)
    seen = outcomes(store)
    store.subscribe_many([Event("a", i) for i in range(40)])
    store.publish()
    store.flush(FLUSH)
    assert sorted(value[0] for _, value, _ in seen) == [2 * i for i in range(40)]
    assert max(value[1] for _, value, _ in seen) > 1  # events of one call awaited together
    assert store.metrics() == (40, 40, 0)

    with store.begin_transaction() as tx:  # a group keeps its order: awaited one at a time
        for i in range(5):
            tx.publish(Event("a", 100 + i))
    assert [value[0] for data, value, _ in seen if data >= 100] == [200, 202, 204, 206, 208]
