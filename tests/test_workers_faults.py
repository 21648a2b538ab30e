"""Specification of failures in worker mode: exceptions, panics, dying workers, a dying parent.

Every test runs under the three start methods and has a deadline (the module timeout and
``flush(timeout=...)``), so a hang fails the test rather than blocking the run.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from busmp import (
    Dispatcher, Event, HandlerPanic, RemoteError, Result, StoreClosed, WorkerCrashed,
)

from support import gone, make_store, running, shm_blocks, wait_until

pytestmark = pytest.mark.timeout(60)

FLUSH = 10.0


def record_after(store):
    seen = []
    store.on_after(lambda ctx, ev, res, err: seen.append((ev.id, res.value, err)))
    return seen


# -- exceptions and handlers shipped to workers -------------------------------------------

class CustomError(Exception):
    def __init__(self, message, code):
        super().__init__(message, code)
        self.message = message
        self.code = code


class LockError(Exception):
    """Cannot be pickled: it carries a lock."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles fine, but cannot be rebuilt: ``args`` holds one value, ``__init__`` needs two."""

    def __init__(self, message, extra):
        super().__init__(message)
        self.extra = extra


def _refuse_to_rebuild():
    raise RuntimeError("this value cannot be rebuilt in the parent")


class RefusesUnpickling:
    def __reduce__(self):
        return (_refuse_to_rebuild, ())


def pid_handler(ctx, ev):
    return Result(value=os.getpid())


def slow_pid_handler(ctx, ev):
    time.sleep(0.005)
    return Result(value=os.getpid())


def raise_custom(ctx, ev):
    raise CustomError("custom failure", 42)


def raise_lock_error(ctx, ev):
    raise LockError("held")


def raise_local_unpicklable(ctx, ev):
    class LocalLockError(Exception):
        pass

    exc = LocalLockError("local held")
    exc.lock = threading.Lock()
    raise exc


def raise_needs_two_args(ctx, ev):
    raise NeedsTwoArgs("two", "args")


def raise_system_exit(ctx, ev):
    raise SystemExit(3)


def raise_keyboard_interrupt(ctx, ev):
    raise KeyboardInterrupt


def die_sigkill(ctx, ev):
    os.kill(os.getpid(), signal.SIGKILL)


def die_exit_7(ctx, ev):
    os._exit(7)


def die_segfault(ctx, ev):
    faulthandler.disable()  # the crash is the point; keep its dump out of the test log
    ctypes.string_at(0)


def returns_unrebuildable_value(ctx, ev):
    return Result(value=RefusesUnpickling())


def returns_lock_value(ctx, ev):
    return Result(value=threading.Lock())


def unpicklable_dispatcher(handler):
    d = Dispatcher()
    d.register("x", handler)
    d.register("p", pid_handler)
    return d


# -- exceptions -----------------------------------------------------------------------------

def test_exception_type_and_attributes_are_kept(start_method):
    with running(make_store(unpicklable_dispatcher(raise_custom), start_method)) as store:
        errors = []
        store.on_error(lambda ctx, ev, err: errors.append(err))
        store.subscribe(Event("x", id="c1"))
        store.publish()
        store.flush(timeout=FLUSH)
        (letter,) = store.dlq.entries()
        assert type(letter.error) is CustomError
        assert letter.error.code == 42 and letter.error.message == "custom failure"
        assert letter.error.args == ("custom failure", 42)
        assert "raise_custom" in letter.handler and letter.attempts == 1
        assert len(errors) == 1 and type(errors[0]) is CustomError and errors[0].code == 42
        assert store.metrics() == (1, 1, 1)


@pytest.mark.parametrize("handler, type_name, message", [
    (raise_lock_error, "LockError", "held"),
    (raise_local_unpicklable, "LocalLockError", "local held"),
    (raise_needs_two_args, "NeedsTwoArgs", "two"),
], ids=["lock-attribute", "local-class", "cannot-rebuild"])
def test_exception_that_cannot_travel_arrives_as_remote_error(start_method, handler, type_name, message):
    with running(make_store(unpicklable_dispatcher(handler), start_method)) as store:
        seen = record_after(store)
        store.subscribe(Event("x", id="u1"))
        store.subscribe(Event("p", id="after"))
        store.publish()
        store.flush(timeout=FLUSH)
        (letter,) = store.dlq.entries()
        err = letter.error
        assert isinstance(err, RemoteError), repr(err)
        assert type_name in err.type_name
        assert err.message == message
        assert handler.__name__ in err.traceback_text
        assert handler.__name__ in letter.handler
        assert letter.event.id == "u1"
        # the bus goes on
        assert next(value for ev_id, value, err in seen if ev_id == "after") != os.getpid()
        assert store.metrics() == (2, 2, 1)


@pytest.mark.parametrize("handler", [returns_unrebuildable_value, returns_lock_value],
                         ids=["cannot-rebuild-in-parent", "cannot-pickle-in-worker"])
def test_result_value_that_cannot_travel_is_captured(start_method, handler):
    """Every failure is captured: a result that cannot reach the parent is a failed invocation
    (dead letter, error hook, counted in errors), and the bus goes on."""
    with running(make_store(unpicklable_dispatcher(handler), start_method, workers=1)) as store:
        seen = record_after(store)
        store.subscribe(Event("x", id="v1"))
        store.publish()
        store.flush(timeout=3)
        store.subscribe(Event("p", id="after"))
        store.publish()
        store.flush(timeout=3)
        (letter,) = store.dlq.entries()
        assert letter.event.id == "v1" and handler.__name__ in letter.handler
        assert isinstance(letter.error, RemoteError), repr(letter.error)
        assert [(ev_id, err is letter.error) for ev_id, _, err in seen] == [("v1", True), ("after", False)]
        assert store.metrics() == (2, 2, 1)


@pytest.mark.parametrize("handler, type_name", [
    (raise_system_exit, "SystemExit"),
    (raise_keyboard_interrupt, "KeyboardInterrupt"),
])
def test_base_exception_becomes_handler_panic_and_worker_lives_on(start_method, handler, type_name):
    with running(make_store(unpicklable_dispatcher(handler), start_method, workers=1)) as store:
        seen = record_after(store)
        store.subscribe(Event("p", id="before"))
        store.publish()
        store.flush(timeout=FLUSH)
        store.subscribe(Event("x", id="panic"))
        store.publish()
        store.flush(timeout=FLUSH)
        store.subscribe(Event("p", id="after"))
        store.publish()
        store.flush(timeout=FLUSH)
        (letter,) = store.dlq.entries()
        assert isinstance(letter.error, HandlerPanic), repr(letter.error)
        assert not isinstance(letter.error, WorkerCrashed)
        assert type_name in letter.error.type_name
        assert handler.__name__ in letter.handler
        assert letter.event.id == "panic"
        values = {ev_id: value for ev_id, value, _ in seen}
        assert values["before"] == values["after"] != os.getpid()  # the same worker process
        assert store.stats().workers == 1
        assert store.metrics() == (3, 3, 1)


# -- dying workers --------------------------------------------------------------------------

@pytest.mark.parametrize("handler, exitcode", [
    (die_sigkill, -signal.SIGKILL),
    (die_exit_7, 7),
    (die_segfault, -signal.SIGSEGV),
], ids=["sigkill-oom", "os-exit-7", "segfault"])
def test_dying_worker_becomes_worker_crashed_and_is_replaced(start_method, handler, exitcode):
    with running(make_store(unpicklable_dispatcher(handler), start_method, workers=2)) as store:
        seen = record_after(store)
        for i in range(8):
            store.subscribe(Event("p", id=f"warm{i}"))
        store.publish()
        store.flush(timeout=FLUSH)
        before = {value for _, value, _ in seen}
        assert len(before) == 2 and os.getpid() not in before

        store.subscribe(Event("x", id="crash"))
        store.publish()
        store.flush(timeout=FLUSH)
        (letter,) = store.dlq.entries()
        err = letter.error
        assert isinstance(err, WorkerCrashed), repr(err)
        assert letter.event.id == "crash"
        assert err.exitcode == exitcode
        assert err.signal == (-exitcode if exitcode < 0 else None)
        assert err.pid in before
        assert wait_until(lambda: gone(err.pid), 2)
        crash_outcomes = [e for ev_id, _, e in seen if ev_id == "crash"]
        assert len(crash_outcomes) == 1 and crash_outcomes[0] is err

        assert store.stats().workers == 2
        seen.clear()
        for i in range(8):
            store.subscribe(Event("p", id=f"next{i}"))
        store.publish()
        store.flush(timeout=FLUSH)
        after = {value for _, value, _ in seen}
        assert len(seen) == 8 and all(e is None for _, _, e in seen)
        assert len(after) == 2, after
        assert err.pid not in after
        assert len(after - before) == 1  # exactly one replacement
        assert store.stats().workers == 2
        assert len(store.stats().per_worker) == 2
        assert len(store.dlq) == 1
        assert store.metrics() == (17, 17, 1)


@pytest.mark.parametrize("many", [False, True], ids=["subscribe", "subscribe_many-chunks"])
def test_sigkill_mid_batch_accounts_for_every_event(start_method, many):
    d = Dispatcher()
    d.register("p", slow_pid_handler)
    n = 200
    with running(make_store(d, start_method, workers=1)) as store:
        seen = record_after(store)
        store.subscribe(Event("p", id="warm"))
        store.publish()
        store.flush(timeout=FLUSH)
        (pid,) = {value for _, value, _ in seen}
        assert pid != os.getpid()
        seen.clear()

        ids = [f"e{i}" for i in range(n)]
        if many:  # events share slots: a crash must still be charged event by event
            assert store.subscribe_many(Event("p", id=i) for i in ids) == n
            assert len(store._bus.slots.pending) < n
        else:
            for i in ids:
                store.subscribe(Event("p", id=i))
        assert store.publish() == n
        assert wait_until(lambda: len(seen) >= 10, 10), "the worker never got going"
        os.kill(pid, signal.SIGKILL)
        store.flush(timeout=20)

        ok = [ev_id for ev_id, _, err in seen if err is None]
        failed_hooks = [ev_id for ev_id, _, err in seen if err is not None]
        letters = store.dlq.entries()
        dead = [letter.event.id for letter in letters]
        assert len(ok) == len(set(ok)), "an event was handled twice"
        assert len(dead) == len(set(dead)), "an event became a dead letter twice"
        assert not set(ok) & set(dead), f"handled and dead: {sorted(set(ok) & set(dead))[:5]}"
        assert len(ok) + len(dead) == n
        assert set(ok) | set(dead) == set(ids)
        assert sorted(failed_hooks) == sorted(dead)
        assert dead, "the kill should have caught some events"
        assert all(isinstance(letter.error, WorkerCrashed) for letter in letters)
        assert all(letter.error.pid == pid and letter.error.signal == signal.SIGKILL for letter in letters)
        assert store.metrics() == (n + 1, n + 1, len(dead))
        stats = store.stats()
        assert stats.in_flight == 0 and stats.workers == 1
        assert stats.free_slots == stats.slots and stats.free_pages == stats.pages  # the chunks' pages too

        # the replacement takes over
        seen.clear()
        store.subscribe(Event("p", id="after"))
        store.publish()
        store.flush(timeout=FLUSH)
        assert [(ev_id, err) for ev_id, _, err in seen] == [("after", None)]
        assert seen[0][1] not in (pid, os.getpid())


# -- a dying parent -------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import os, sys, time
    from busmp import Dispatcher, Event, EventStore, Result

    def pid_handler(ctx, ev):
        return Result(value=os.getpid())

    if __name__ == "__main__":
        d = Dispatcher()
        d.register("p", pid_handler)
        store = EventStore(d, 64, workers=2, start_method=sys.argv[1])
        pids = set()
        store.on_after(lambda ctx, ev, res, err: pids.add(res.value))
        for i in range(8):
            store.subscribe(Event("p", id=str(i)))
        store.publish()
        store.flush(timeout=30)
        print(" ".join(map(str, sorted(pids))), flush=True)
        time.sleep(120)
""")


def test_parent_sigkill_leaves_no_worker_and_no_shared_memory(start_method, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen([sys.executable, str(script), start_method], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip(), f"child printed nothing; stderr: {child.stderr.read()[-2000:]}"
        pids = [int(p) for p in line.split()]
        assert len(pids) == 2 and child.pid not in pids
        mine = f"busmp_{child.pid}_"
        assert shm_blocks(mine), "the child's store should hold shared memory"
        assert all(not gone(p) for p in pids)
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        child.stderr.close()
    assert wait_until(lambda: all(gone(p) for p in pids), 3), \
        [p for p in pids if not gone(p)]
    assert wait_until(lambda: not shm_blocks(mine), 5), sorted(shm_blocks(mine))


class HoldsALock:
    """A handler that cannot travel to a worker: its state holds a lock."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self, ctx, event):
        return None


def test_a_handler_that_cannot_be_pickled_is_named_and_publish_changes_nothing():
    d = Dispatcher()
    d.register("ok", lambda ctx, ev: None)
    d.register("p", HoldsALock())
    with running(make_store(d, "fork", workers=1)) as store:
        store.subscribe(Event("p", 1))
        with pytest.raises(TypeError, match=r"handler .*HoldsALock of projection 'p' cannot be pickled "
                                             r"for the worker processes \(TypeError: cannot pickle '_thread.lock'"):
            store.publish()
        assert store.stats().pending == 1 and store.metrics() == (1, 0, 0)
    (letter,) = store.dlq.entries()
    assert letter.event == Event("p", 1) and isinstance(letter.error, StoreClosed)  # never published


def test_a_handler_registered_between_check_and_dispatch_turns_the_events_into_dead_letters():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with running(make_store(d, "fork", workers=1)) as store:
        store.subscribe_many([Event("p", i) for i in range(3)])
        checked = store._bus.executor.check_routes

        def register_after_the_check(routes, key):
            checked(routes, key)
            d.register("p", HoldsALock())

        store._bus.executor.check_routes = register_after_the_check
        with pytest.raises(TypeError, match="HoldsALock of projection 'p' cannot be pickled"):
            store.publish()
        store.flush(timeout=10)
        assert store.stats().in_flight == 0
    letters = store.dlq.entries()
    # one per (event, handler): each call that never ran
    assert sorted((dl.event.data, "HoldsALock" in dl.handler) for dl in letters) == [
        (i, lock) for i in range(3) for lock in (False, True)]
    assert all(isinstance(dl.error, TypeError) for dl in letters)


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "psutil"])
def test_a_worker_sees_its_store_process_end_at_once(pidfd, monkeypatch):
    from busmp._workers.worker import Owner

    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd on this platform")
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        watch = Owner(owner.pid)
        assert watch.alive()
        waiter = threading.Thread(target=watch.wait_until_gone)
        waiter.start()
        owner.kill()
        owner.wait(10)
        waiter.join(5)
        assert not waiter.is_alive() and not watch.alive()
        watch.close()
    finally:
        owner.kill()
        owner.wait(10)


UNGUARDED = textwrap.dedent("""
    # No `if __name__ == "__main__":` guard: every worker re-runs this file and dies starting up.
    import os, sys
    from busmp import Dispatcher, Event, EventStore

    if __name__ == "__main__":
        print("owner", os.getpid(), flush=True)
    d = Dispatcher()
    d.register("p", print)
    store = EventStore(d, 1 << 8, workers=2, start_method=sys.argv[1] if len(sys.argv) > 1 else None)
    store.subscribe(Event("p", 1))
    store.publish()
    store.drain()
    print("never reached")
""")


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_script_whose_workers_cannot_start_fails_at_store_creation_naming_the_fix(start_method, tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(script), start_method], capture_output=True,
                          text=True, timeout=50)
    assert time.monotonic() - started < 30
    assert done.returncode == 1
    assert "never reached" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("busmp._errors.BusError: a busmp worker process")
    assert "if __name__ == '__main__':" in last and str(script) in last
    owner = int(done.stdout.split()[1])
    assert shm_blocks(f"busmp_{owner}_") == set()  # the failed creation released what it had made


def test_a_program_read_from_stdin_fails_at_store_creation_naming_the_fix():
    done = subprocess.run([sys.executable, "-", "forkserver"], input=UNGUARDED, capture_output=True,
                          text=True, timeout=50)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot be imported" in last and "start_method='fork'" in last
