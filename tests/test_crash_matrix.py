"""The crash matrix: every fault in every phase of an event's way through a worker.

Faults: an exception, ``SystemExit``, ``os._exit``, SIGKILL, a segfault, and a call that never
returns (stopped by ``handler_timeout``). Phases: unpickling the event in the worker, the
handler, pickling its result, middleware, and (in the parent) a hook. Each case must end with a
named error, no hang, the pool still serving, and the law: every accepted (event, handler)
pair ends exactly once, as a success or a dead letter. Fork only, to keep it fast; the start
methods are covered one by one in ``test_workers_faults``.
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import logging
import os
import signal
import time

import pytest

from busmp import (
    DeadLetterQueue, Dispatcher, Event, EventStore, HandlerPanic, RemoteError, Result, WorkerCrashed,
)
from busmp._transport.codec import DECODE_HANDLER
from busmp._transport.records import PID

from support import running, wait_until

pytestmark = pytest.mark.timeout(60)

PARENT = os.getpid()  # a forked worker inherits it: faults fire only where os.getpid() differs
TIMEOUT = 0.5


class Boom(ValueError):
    pass


def fault(kind):
    if kind == "raise":
        raise Boom("boom")
    if kind == "system-exit":
        raise SystemExit(3)
    if kind == "os-exit":
        os._exit(3)
    if kind == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "segfault":
        faulthandler.disable()  # the crash is the point; keep its dump out of the test log
        ctypes.string_at(0)
    if kind == "hang":
        time.sleep(30)


def in_worker_fault(kind):
    """Called when a pickle is loaded: the fault in a worker, a plain value in the parent."""
    if os.getpid() != PARENT:
        fault(kind)
    return kind


class FaultsOnLoad:
    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        return (in_worker_fault, (self.kind,))


class FaultsOnDump:
    def __init__(self, kind):
        self.kind = kind

    def __reduce__(self):
        if os.getpid() != PARENT:
            fault(self.kind)
        return (str, (self.kind,))


def handler(ctx, ev):
    if isinstance(ev.data, tuple) and ev.data[0] == "handler":
        fault(ev.data[1])
    if isinstance(ev.data, tuple) and ev.data[0] == "result":
        return Result(value=FaultsOnDump(ev.data[1]))
    return Result("handler", os.getpid())


def second(ctx, ev):
    return Result("second")


def middleware(next_handler):
    def wrapped(ctx, ev):
        if isinstance(ev.data, tuple) and ev.data[0] == "middleware":
            fault(ev.data[1])
        return next_handler(ctx, ev)
    return wrapped


FAULTS = ["raise", "system-exit", "os-exit", "sigkill", "segfault", "hang"]
WORKER_PHASES = ["unpickle", "handler", "result", "middleware"]
CRASHED = {"os-exit": 3, "sigkill": -signal.SIGKILL, "segfault": -signal.SIGSEGV}


def expected(phase, kind):
    """The error of the faulty event's first handler."""
    if kind in CRASHED:
        return WorkerCrashed
    if kind == "hang":
        return TimeoutError
    if phase == "result":
        return RemoteError
    if kind == "system-exit":
        return HandlerPanic
    return Boom


def make(workers=2):
    d = Dispatcher()
    d.register("p", handler, second)
    store = EventStore(d, 64, workers=workers, dlq=DeadLetterQueue(), start_method="fork",
                       handler_timeout=TIMEOUT)
    store.use(middleware)
    return store


def ids(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.mark.parametrize("kind", FAULTS)
@pytest.mark.parametrize("phase", WORKER_PHASES)
def test_a_fault_in_a_worker_phase(phase, kind):
    data = FaultsOnLoad(kind) if phase == "unpickle" else (phase, kind)
    names = [*ids("e", 3), "bad", *ids("e", 6)[3:]]
    with running(make(), timeout=20) as store:
        outcomes = record(store)
        for name in names:
            store.subscribe(Event("p", data if name == "bad" else None, id=name))
        started = time.monotonic()
        store.publish()
        store.flush(timeout=15)
        assert time.monotonic() - started < 10, "a hang"
        letters = store.dlq.entries()
        check_law(names, outcomes, letters)
        published, processed, errors = store.metrics()
        whole = sum(dl.handler == DECODE_HANDLER for dl in letters)  # one letter for both calls
        assert published == len(names) and processed == 2 * len(names) - whole and errors == len(letters)
        (first, *_) = [dl for dl in letters if dl.event.id == "bad"]
        assert isinstance(first.error, expected(phase, kind)), (phase, kind, repr(first.error))
        if kind in CRASHED:
            assert first.error.exitcode == CRASHED[kind]
        if kind == "hang":
            assert "ran past handler_timeout=0.5 s" in str(first.error)
        # the good events succeeded, or died with the worker that held them
        assert all(dl.event.id == "bad" or isinstance(dl.error, WorkerCrashed) for dl in letters)
        check_serving(store, outcomes)


def record(store):
    """Successes per (event, handler) (the handlers' results say which), failures per event."""
    outcomes = {"ok": collections.Counter(), "failed": collections.Counter()}

    def after(ctx, ev, res, err):
        if err is None:
            outcomes["ok"][(ev.id, res.message)] += 1
        else:
            outcomes["failed"][ev.id] += 1
    store.on_after(after)
    return outcomes


def check_law(names, outcomes, letters):
    """Every (event, handler) pair ended exactly once: a success or a dead letter, never both."""
    dead = collections.Counter((dl.event.id, dl.handler.rsplit(".", 1)[-1]) for dl in letters)
    assert set(dead.values()) <= {1}, dead
    assert set(outcomes["ok"].values()) <= {1}, outcomes["ok"]
    for name in names:
        ok = {h for (i, h) in outcomes["ok"] if i == name}
        failed = {h for (i, h) in dead if i == name}
        if failed == {DECODE_HANDLER.rsplit(".", 1)[-1]}:
            assert not ok  # undecodable: one letter for the event, no call ran
        else:
            assert not ok & failed and ok | failed == {"handler", "second"}, (name, ok, failed)
        assert outcomes["failed"][name] == len(failed)


def check_serving(store, outcomes):
    """The pool still serves: both positions hold a started worker, and new events are handled."""
    handles = store._bus.executor.handles
    assert wait_until(lambda: all(h.process is not None and h.jobs.control(PID) for h in handles), 10)
    fresh = ids("after", 6)
    store.subscribe_many([Event("p", id=i) for i in fresh])
    store.publish()
    store.flush(timeout=10)
    for i in fresh:
        assert outcomes["ok"][(i, "handler")] == 1 and outcomes["ok"][(i, "second")] == 1


@pytest.mark.parametrize("kind", ["raise", "system-exit"])
def test_a_fault_in_a_hook_is_logged_and_changes_nothing(kind, caplog):
    with running(make(), timeout=20) as store:
        calls = collections.Counter()

        def counting(ctx, ev, res, err):
            calls[ev.id] += 1

        def faulty(ctx, ev, res, err):
            if ev.id == "bad":
                fault(kind)

        store.on_after(counting)
        store.on_after(faulty)
        names = [*ids("e", 6), "bad"]
        with caplog.at_level(logging.ERROR, logger="busmp"):
            store.subscribe_many([Event("p", id=i) for i in names])
            store.publish()
            # read by the collector thread (a hook's SystemExit in the main thread is the program's)
            assert wait_until(lambda: sum(calls.values()) == 2 * len(names), 10)
            store.flush(timeout=10)
        assert calls == {i: 2 for i in names} and len(store.dlq) == 0
        assert store.metrics() == (7, 14, 0)
        assert any("hook" in r.getMessage() for r in caplog.records)
        store.subscribe(Event("p", id="after"))
        store.publish()
        store.flush(timeout=10)
        assert calls["after"] == 2
