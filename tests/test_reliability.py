"""Reliability under faults found by probing: nothing lost, nothing handled or counted twice,
no hang.

Each test injects its fault from a side thread or a subprocess script while events stream, and
checks the law per event: every accepted (event, handler) pair ends exactly once, as a success
or as a dead letter.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from busmp import Dispatcher, Event, WorkerCrashed

from support import gone, hangs_in_batch, hangs_on_hang, make_store, running, second_step, wait_until

pytestmark = pytest.mark.timeout(90)


def nothing(ctx, ev):
    return None


def tiny_sleep(ctx, ev):
    time.sleep(0.0002)


# -- the fork server killed while events stream ---------------------------------------------

def test_killing_the_fork_server_loses_and_repeats_nothing():
    """A killed fork server makes multiprocessing's sentinels fire for workers that live on;
    the pool must not take them for dead (a replacement would share their channels)."""
    from multiprocessing import forkserver

    d = Dispatcher()
    d.register("p", tiny_sleep)
    n, rounds = 3000, 30
    with running(make_store(d, "forkserver", workers=2, buffer_size=1 << 12)) as store:
        seen: collections.Counter[str] = collections.Counter()
        errors = []
        store.on_after(lambda ctx, ev, res, err: seen.update([ev.id]))
        store.on_error(lambda ctx, ev, err: errors.append(err))
        store.subscribe(Event("p", id="warm"))
        store.publish()
        store.flush(timeout=10)
        server = forkserver._forkserver._forkserver_pid
        assert server is not None and not gone(server)
        workers = [h.process.pid for h in store._bus.executor.handles]
        killed = threading.Event()

        def kill_server():
            wait_until(lambda: sum(seen.values()) > 600, 20)
            os.kill(server, signal.SIGKILL)
            killed.set()

        killer = threading.Thread(target=kill_server)
        killer.start()
        per_round = n // rounds
        for r in range(rounds):
            store.subscribe_many([Event("p", id=f"e{r * per_round + i}") for i in range(per_round)])
            store.publish()
            time.sleep(0.01)
        killer.join(30)
        assert killed.is_set()
        store.flush(timeout=30)
        assert wait_until(lambda: gone(server), 5)
        assert [h.process.pid for h in store._bus.executor.handles] == workers  # none replaced
        assert errors == [] and len(store.dlq) == 0
        assert len(seen) == n + 1 and set(seen.values()) == {1}
        assert store.metrics() == (n + 1, n + 1, 0)
    assert wait_until(lambda: all(gone(p) for p in workers), 5), [p for p in workers if not gone(p)]


# -- file descriptors run out -------------------------------------------------------------

NOFILE = textwrap.dedent("""
    import os, resource, sys
    from busmp import BufferFull, DeadLetterQueue, Dispatcher, Event, EventStore

    def nothing(ctx, ev):
        return None

    if __name__ == "__main__":
        d = Dispatcher()
        d.register("p", nothing)
        store = EventStore(d, 256, workers=1, slot_size=96, dlq=DeadLetterQueue(), start_method="fork")
        for i in range(5):  # some spill blocks while descriptors are plenty
            store.subscribe(Event("p", b"x" * 10240, id=f"early{i}"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard))
        filler = []
        try:
            while True:
                filler.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        accepted, refused = 5, []
        for i in range(100):  # 10 KiB each: bigger than a slot and than a page, so a spill block
            try:
                store.subscribe(Event("p", b"x" * 10240, id=str(i)))
                accepted += 1
            except BufferFull as exc:
                refused.append(str(exc))
        for fd in filler:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        store.publish()
        store.flush(timeout=20)
        stats = store.stats()
        print(accepted, len(refused), stats.free_slots, stats.slots, stats.pending, ",".join(map(str, store.metrics())),
              len(store.dlq), "|", refused[0] if refused else "")
        store.drain(timeout=20)
""")


def test_running_out_of_file_descriptors_refuses_the_event_and_loses_no_slot(tmp_path):
    script = tmp_path / "nofile.py"
    script.write_text(NOFILE)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    counts, message = done.stdout.strip().rsplit("\n", 1)[-1].split(" | ")
    accepted, refused, free, slots, pending, metrics, letters = counts.split(" ", 6)
    assert int(refused) > 0 and int(accepted) + int(refused) == 105
    assert "ulimit -n" in message, message
    assert free == slots and pending == "0" and letters == "0"
    assert metrics == f"{accepted},{accepted},0"  # a refused event left no trace


# -- hooks that raise SystemExit or KeyboardInterrupt in the collector thread -------------------

@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt])
def test_a_hook_raising_a_base_exception_does_not_stop_the_outcomes(exc):
    d = Dispatcher()
    d.register("p", nothing)
    with running(make_store(d, "fork", workers=2)) as store:
        seen = []

        def hook(ctx, ev, res, err):
            seen.append(ev.id)
            if ev.id.startswith("boom"):
                raise exc(ev.id)

        store.on_after(hook)
        for r in range(3):
            ids = [f"boom{r}", *(f"e{r}.{i}" for i in range(50))]
            store.subscribe_many([Event("p", id=i) for i in ids])
            store.publish()
            # outcomes arrive through the collector thread (flush() is not reading them yet)
            assert wait_until(lambda ids=ids: set(ids) <= set(seen), 10), f"round {r}: outcomes stopped arriving"
            store.flush(timeout=10)
        assert store._bus.executor.collector._thread.is_alive()
        assert sorted(seen) == sorted(seen_ids := [i for r in range(3) for i in
                                                   [f"boom{r}", *(f"e{r}.{i}" for i in range(50))]])
        assert len(seen_ids) == 153 and store.metrics() == (153, 153, 0)


# -- workers killed over and over: each (event, handler) ends once -------------------------------

def first_handler(ctx, ev):
    return None


def second_handler(ctx, ev):
    if ev.data % 97 == 0:
        raise ValueError(ev.data)  # some failures too: they are reported one by one
    return None


class Killer(threading.Thread):
    """SIGKILLs a live worker of ``store`` every ``every`` seconds until stopped."""

    def __init__(self, store, every):
        super().__init__(daemon=True)
        self.store, self.every, self.kills = store, every, 0
        self.halt = threading.Event()

    def run(self):
        n = 0
        while not self.halt.wait(self.every):
            handles = self.store._bus.executor.handles
            process = handles[n % len(handles)].process
            n += 1
            if process is None:
                continue
            try:
                os.kill(process.pid, signal.SIGKILL)
                self.kills += 1
            except (ProcessLookupError, ValueError, AttributeError):
                pass

    def stop(self):
        self.halt.set()
        self.join(10)


@pytest.mark.parametrize("hooks", [True, False], ids=["with-hooks", "counts-only"])
def test_workers_killed_repeatedly_each_call_ends_once(hooks):
    """A worker may send an outcome and die before it moves its progress words: the parent
    must then not charge that call again, nor count it twice, nor miss a call done quietly."""
    from busmp import OverrunPolicy

    d = Dispatcher()
    d.register("p", first_handler, second_handler)
    n = 20000 if hooks else 10000
    names = ("test_reliability.first_handler", "test_reliability.second_handler")
    with running(make_store(d, "fork", workers=2, buffer_size=1 << 12, policy=OverrunPolicy.BLOCK),
                 timeout=60) as store:
        hooked = []
        if hooks:
            def after(ctx, ev, res, err):
                hooked.append(ev.data)
            store.on_after(after)
            store.on_before(lambda ctx, ev: None)
        killer = Killer(store, 0.05)
        killer.start()
        try:  # at least n events, and on until the killer has struck a few times
            start = 0
            while start < n or (killer.kills < 5 and start < 50 * n):
                store.subscribe_many([Event("p", i) for i in range(start, start + 500)], timeout=30)
                store.publish()
                start += 500
            n = start
        finally:
            killer.stop()
        store.flush(timeout=60)
        letters = store.dlq.entries()
        crashed = collections.Counter((dl.event.data, dl.handler) for dl in letters)
        assert all(count == 1 for count in crashed.values()), "a call became a dead letter twice"
        assert {h for _, h in crashed} <= set(names), {h for _, h in crashed}
        raised = {(i, names[1]) for i in range(0, n, 97)}
        for key in raised:
            assert key in crashed  # raised, or crashed before it could
        published, processed, errors = store.metrics()
        assert published == n and processed == 2 * n and errors == len(letters)
        if hooks:
            calls = collections.Counter(hooked)
            assert set(calls) == set(range(n)) and set(calls.values()) == {2}, \
                [(i, c) for i, c in calls.items() if c != 2][:5]
        stats = store.stats()
        assert stats.in_flight == 0 and stats.free_slots == stats.slots
    assert killer.kills >= 3, killer.kills
    crashes = sum(isinstance(dl.error, WorkerCrashed) for dl in letters)
    assert crashes > 0


# -- replacements killed while they start -------------------------------------------------

def pid_handler(ctx, ev):
    from busmp import Result

    time.sleep(0.002)
    return Result(value=os.getpid())


def test_replacements_killed_while_they_start_are_replaced_again():
    """A worker killed before it reported ready did not fail to start: the pool keeps replacing
    it (with a short back-off) and never gives up on the store."""
    from busmp._transport.records import PID

    d = Dispatcher()
    d.register("p", pid_handler)
    with running(make_store(d, "spawn", workers=2), timeout=30) as store:
        values = []
        store.on_after(lambda ctx, ev, res, err: values.append((ev.id, res.value, err)))
        store.subscribe_many([Event("p", id=f"warm{i}") for i in range(8)])
        store.publish()
        store.flush(timeout=20)
        handles = store._bus.executor.handles
        handle = handles[0]
        killed, early = [], 0

        def kill_while_starting():
            nonlocal early
            deadline = time.monotonic() + 40
            while len(killed) < 5 and time.monotonic() < deadline:
                process = handle.process
                if process is not None and process.pid not in killed:
                    early += killed != [] and handle.jobs.control(PID) == 0
                    os.kill(process.pid, signal.SIGKILL)
                    killed.append(process.pid)
                time.sleep(0.0002)

        killer = threading.Thread(target=kill_while_starting)
        killer.start()
        killer.join(45)
        assert len(killed) == 5 and early >= 3, (killed, early)
        assert wait_until(lambda: all(h.process is not None and h.jobs.control(PID) != 0 for h in handles), 20)
        values.clear()
        store.subscribe_many([Event("p", id=str(i)) for i in range(200)])
        store.publish()  # no BusError: the store never gave up on its workers
        store.flush(timeout=20)
        assert sorted(i for i, _, err in values if err is None) == sorted(str(i) for i in range(200))
        workers = {value for _, value, _ in values}
        assert len(workers) == 2 and not workers & set(killed)
        assert len(store.dlq) == 0


BREAKS_LATER = textwrap.dedent("""
    import os, signal, sys, time
    from busmp import BusError, DeadLetterQueue, Dispatcher, Event, EventStore, StoreClosed, WorkerCrashed

    def nothing(ctx, ev):
        return None

    if __name__ == "__main__":
        d = Dispatcher()
        d.register("p", nothing)
        store = EventStore(d, 256, workers=1, dlq=DeadLetterQueue(), start_method="spawn")
        os.rename(__file__, __file__ + ".gone")  # from now on a new worker cannot load the main module
        os.kill(store._bus.executor.handles[0].process.pid, signal.SIGKILL)
        subscribed, refused = 0, None
        deadline = time.monotonic() + 30
        while refused is None and time.monotonic() < deadline:
            subscribed += store.subscribe_many([Event("p", i) for i in range(10)])
            try:
                store.publish()
            except BusError as exc:
                refused = exc
            time.sleep(0.02)
        pending = store.stats().pending
        store.drain(timeout=20)
        letters = store.dlq.drain()
        crashed = sum(isinstance(dl.error, WorkerCrashed) for dl in letters)
        closed = sum(isinstance(dl.error, StoreClosed) for dl in letters)
        print(subscribed, pending, len(letters), crashed, closed, ",".join(map(str, store.metrics())), "|", refused)
""")


def test_a_pool_whose_replacements_cannot_start_refuses_before_taking_events(tmp_path):
    """Three replacements in a row that exit by themselves before they are ready: the next
    publish() raises BusError naming the cause, before it takes any event; what was taken
    before becomes dead letters; nothing vanishes."""
    script = tmp_path / "breaks_later.py"
    script.write_text(BREAKS_LATER)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    counts, refused = done.stdout.strip().rsplit("\n", 1)[-1].split(" | ")
    subscribed, pending, letters, crashed, closed, metrics = counts.split(" ")
    assert "could not start" in refused and "main module" in refused, refused
    assert int(pending) >= 1  # the refused publish took nothing (its chunk is pending)
    assert int(letters) == int(subscribed) == int(crashed) + int(closed)
    assert int(closed) == 10
    assert metrics == f"{subscribed},{crashed},{crashed}"


# -- handler_timeout --------------------------------------------------------------------

def test_handler_timeout_needs_workers_and_a_positive_number():
    from busmp import EventStore

    with pytest.raises(ValueError, match=r"handler_timeout needs worker processes.*workers=N"):
        EventStore(Dispatcher(), 8, handler_timeout=1.0)
    for bad in (0, -1, "1", True, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="handler_timeout must be a number of seconds > 0"):
            EventStore(Dispatcher(), 8, workers=1, handler_timeout=bad)


def timeout_store(d, **options):
    return make_store(d, "fork", workers=2, **options)


def record_calls(store):
    calls: collections.Counter[tuple[str, str | None, str]] = collections.Counter()

    def after(ctx, ev, res, err):
        calls[(ev.id, type(err).__name__ if err is not None else None)] += 1
    store.on_after(after)
    return calls


def test_a_call_past_handler_timeout_is_stopped_and_the_rest_is_handled_once():
    d = Dispatcher()
    d.register("p", hangs_on_hang, second_step)
    n = 200
    with running(timeout_store(d, handler_timeout=0.3)) as store:
        calls = record_calls(store)
        pids_before = [h.process.pid for h in store._bus.executor.handles]
        store.subscribe_many([Event("p", id="hang"), *(Event("p", id=str(i)) for i in range(n))])
        started = time.monotonic()
        store.publish()
        store.flush(timeout=10)
        assert time.monotonic() - started < 5
        letters = sorted(store.dlq.entries(), key=lambda dl: dl.handler)
        assert [(dl.event.id, dl.handler.rsplit(".", 1)[-1], type(dl.error)) for dl in letters] == [
            ("hang", "hangs_on_hang", TimeoutError), ("hang", "second_step", WorkerCrashed)]
        assert "hangs_on_hang ran past handler_timeout=0.3 s" in str(letters[0].error)
        assert calls == {("hang", "TimeoutError"): 1, ("hang", "WorkerCrashed"): 1,
                         **{(str(i), None): 2 for i in range(n)}}  # the unstarted ones ran elsewhere, once
        assert store.metrics() == (n + 1, 2 * (n + 1), 2)
        pids_after = [h.process.pid for h in store._bus.executor.handles]
        assert len(set(pids_after) - set(pids_before)) == 1  # one worker killed and replaced
        stats = store.stats()
        assert stats.in_flight == 0 and stats.free_slots == stats.slots


def test_a_context_deadline_that_passes_first_counts_the_same():
    from busmp import Context

    d = Dispatcher()
    d.register("p", hangs_on_hang)
    with running(timeout_store(d, handler_timeout=60)) as store:
        calls = record_calls(store)
        store.subscribe(Event("p", id="hang"), Context().with_timeout(0.3))
        store.subscribe(Event("p", id="fine"), Context().with_timeout(0.3))
        store.publish()
        store.flush(timeout=10)
        (letter,) = store.dlq.entries()
        assert letter.event.id == "hang" and isinstance(letter.error, TimeoutError)
        assert "ran past its context's deadline" in str(letter.error)
        assert calls == {("hang", "TimeoutError"): 1, ("fine", None): 1}


def test_a_batch_chunk_past_handler_timeout_is_a_timeout_for_each_of_its_events():
    d = Dispatcher()
    with running(timeout_store(d, handler_timeout=0.3)) as store:
        store.register_batch("b", 4, hangs_in_batch)
        calls = record_calls(store)
        store.subscribe_many([Event("b", id=str(i)) for i in range(4)])
        store.publish()
        store.flush(timeout=10)
        letters = store.dlq.entries()
        assert sorted(dl.event.id for dl in letters) == ["0", "1", "2", "3"]
        assert all(isinstance(dl.error, TimeoutError) and "hangs_in_batch" in dl.handler for dl in letters)
        assert calls == {(str(i), "TimeoutError"): 1 for i in range(4)}
        assert store.metrics() == (4, 4, 4)


# -- BLOCK with a ring full of events nobody publishes --------------------------------------

@pytest.mark.parametrize("workers", [0, 1])
def test_block_on_a_ring_full_of_unpublished_events_ends_with_buffer_full(workers):
    from busmp import BLOCK, BufferFull, EventStore

    d = Dispatcher()
    d.register("p", nothing)
    with running(EventStore(d, 4, BLOCK, workers=workers, start_method="fork")) as store:
        store.subscribe_many([Event("p", i) for i in range(4)])
        started = time.monotonic()
        with pytest.raises(BufferFull, match=r"full of events no one has published.*call publish\(\)"):
            store.subscribe(Event("p", "late"))
        assert 0.9 < time.monotonic() - started < 5
        assert store.metrics() == (4, 0, 0)  # the refused event left no trace
        assert store.publish() == 4
        store.subscribe(Event("p", "late"))  # room again
        store.publish()
        store.flush(timeout=10)
        assert store.metrics() == (5, 5, 0)


def test_block_keeps_waiting_while_another_thread_publishes_within_the_grace():
    from busmp import BLOCK, EventStore

    d = Dispatcher()
    d.register("p", nothing)
    with running(EventStore(d, 2, BLOCK)) as store:
        store.subscribe_many([Event("p", i) for i in range(2)])
        publisher = threading.Timer(0.5, store.publish)
        publisher.start()
        store.subscribe(Event("p", "late"), timeout=5)  # no BufferFull: the publish came
        publisher.join()
        store.publish()
        assert store.metrics() == (3, 3, 0)


# -- follow-up storms -------------------------------------------------------------------

def doubles(ctx, ev):
    ctx.emit(Event("storm", ev.data + 1))
    ctx.emit(Event("storm", ev.data + 1))


def test_max_followups_is_validated():
    from busmp import EventStore

    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="max_followups must be an int >= 1"):
            EventStore(Dispatcher(), 8, max_followups=bad)


@pytest.mark.parametrize("workers", [0, 2], ids=["sync", "workers"])
def test_a_doubling_storm_is_cut_off_and_dies_down(workers):
    from busmp import BufferFull, DeadLetterQueue, EventStore

    d = Dispatcher()
    d.register("storm", doubles)
    limit = 500
    store = EventStore(d, 1 << 10, workers=workers, dlq=DeadLetterQueue(), start_method="fork",
                       max_followups=limit)
    with running(store, timeout=30):
        store.subscribe(Event("storm", 0))
        store.publish()  # sync mode: returns once the storm is over
        store.flush(timeout=30)
        published, processed, errors = store.metrics()
        letters = store.dlq.entries()
        assert letters and all(isinstance(dl.error, BufferFull) and "max_followups" in str(dl.error)
                               for dl in letters)
        assert processed == published and errors == len(letters)
        assert published < 20 * limit  # a storm of 2**depth, cut off: a few cut-offs at most
        assert store._bus.followups == 0 and store.stats().in_flight == 0
        # the cut-off is lifted once the storm is over: a follow-up goes through again
        store.subscribe(Event("storm", 10**6))
        store.dlq.drain()
        store.publish()
        store.flush(timeout=30)
        assert store.metrics()[0] > published + 1


# -- smaller: orphaned shared memory, a handler that cannot travel ---------------------------

def test_a_new_store_sweeps_the_blocks_of_dead_processes_and_only_those(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphan = f"/dev/shm/busmp_{dead.pid}_0badc0de_ring"
        kept = f"/dev/shm/busmp_{alive.pid}_0badc0de_ring"
        not_ours = "/dev/shm/busmp_x_notastore"
        for path in (orphan, kept, not_ours):
            with open(path, "wb") as f:
                f.write(b"\0" * 64)
        try:
            with running(make_store(Dispatcher(), "fork", workers=1)):
                pass
            assert not os.path.exists(orphan)  # its owner is gone: swept
            assert os.path.exists(kept) and os.path.exists(not_ours)
        finally:
            for path in (orphan, kept, not_ours):
                if os.path.exists(path):
                    os.unlink(path)
    finally:
        alive.kill()
        alive.wait(10)


class HoldsALock:
    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, ctx, ev):
        return None


def test_a_handler_that_cannot_travel_is_named_with_the_fix():
    d = Dispatcher()
    d.register("p", HoldsALock())
    with running(make_store(d, "fork", workers=1)) as store:
        store.subscribe(Event("p"))
        with pytest.raises(TypeError) as raised:
            store.publish()
        message = str(raised.value)
        assert "handler test_reliability.HoldsALock of projection 'p' cannot be pickled" in message
        assert "module-level function" in message and "cannot be unregistered" in message


def test_a_stores_shared_memory_is_for_its_user_alone():
    import stat

    with running(make_store(Dispatcher(), "fork", workers=1, name="secret-test")):
        mine = [n for n in os.listdir("/dev/shm")
                if n.startswith(f"busmp_{os.getpid()}_") or n.endswith("_secret-test")]
        assert len(mine) >= 4  # ring, job and result channel, statistics
        for name in mine:
            assert stat.S_IMODE(os.stat(f"/dev/shm/{name}").st_mode) == 0o600, name


async def awaits_on_hang(ctx, ev):
    import asyncio

    if ev.id == "hang":
        await asyncio.sleep(30)
    return None


def test_an_async_call_past_handler_timeout_is_cancelled_and_its_worker_lives_on():
    d = Dispatcher()
    d.register("p", awaits_on_hang)
    with running(timeout_store(d, handler_timeout=0.3)) as store:
        calls = record_calls(store)
        pids = [h.process.pid for h in store._bus.executor.handles]
        store.subscribe_many([Event("p", id="hang"), *(Event("p", id=str(i)) for i in range(20))])
        started = time.monotonic()
        store.publish()
        store.flush(timeout=10)
        assert time.monotonic() - started < 5
        (letter,) = store.dlq.entries()
        assert letter.event.id == "hang" and isinstance(letter.error, TimeoutError)
        assert "awaits_on_hang ran past handler_timeout=0.3 s" in str(letter.error)
        assert calls == {("hang", "TimeoutError"): 1, **{(str(i), None): 1 for i in range(20)}}
        assert [h.process.pid for h in store._bus.executor.handles] == pids  # nobody was killed
