"""Watching a running bus: store names, the shared statistics block, ``read_stats``, logging.

Names used here carry this process's pid: other test runs of the same user share /dev/shm,
and two live stores may not share a name.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import busmp
from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, OverrunPolicy, read_stats
from busmp._transport import stats as _stats
from busmp._watch import TICK_SECONDS

from support import running

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def unique(tag: str) -> str:
    return f"t{os.getpid()}-{tag}"[:24]


def spin(ctx, ev):
    """A little CPU work per event, so that a run lasts long enough to be watched."""
    until = time.perf_counter() + ev.data
    while time.perf_counter() < until:
        pass


def fail(ctx, ev):
    raise ValueError("no")


def noop(ctx, ev):
    return None


def wait_for(predicate, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


# -- names ------------------------------------------------------------------------------------

def test_a_store_has_the_name_it_was_given_or_a_generated_one():
    with EventStore(Dispatcher(), 8, name=unique("given")) as named, EventStore(Dispatcher(), 8) as anonymous:
        assert named.name == unique("given")
        assert anonymous.name.startswith(f"bus-{os.getpid()}-")
        assert _stats.NAME_RE.fullmatch(anonymous.name)
        assert named.name in repr(named)
        assert {named.name, anonymous.name} <= set(_stats.live_names())


@pytest.mark.parametrize("bad", ["", "x" * 25, "a b", "a/b", "ä", "semi;colon", 7])
def test_an_invalid_name_is_a_value_error_naming_the_rule(bad):
    with pytest.raises(ValueError, match="1-24 characters of A-Z a-z 0-9"):
        EventStore(Dispatcher(), 8, name=bad)
    with pytest.raises(ValueError, match="1-24 characters"):
        read_stats(bad)


def test_two_live_stores_may_not_share_a_name_but_a_drained_one_frees_it():
    name = unique("twice")
    with EventStore(Dispatcher(), 8, name=name):
        with pytest.raises(ValueError, match=f"already named '{name}'.*choose another name"):
            EventStore(Dispatcher(), 8, name=name)
    with EventStore(Dispatcher(), 8, name=name) as again:
        assert again.name == name


def test_the_longest_name_and_every_allowed_character_work():
    name = ("A-z_0.9" + str(os.getpid()) * 4)[:24]
    with EventStore(Dispatcher(), 8, name=name) as store:
        assert read_stats(name).name == name == store.name


# -- Stats counts events ----------------------------------------------------------------------------

def test_pending_in_flight_and_free_room_are_counted_in_events_not_slots(start_method):
    d = Dispatcher()
    d.register("p", spin)
    store = EventStore(d, 1 << 10, workers=2, start_method=start_method)
    with running(store):
        # The second worker's share takes longer: for a while, one job is done and one is not.
        store.subscribe_many([Event("p", 0.0005)] * 150 + [Event("p", 0.004)] * 150)
        assert len(store._bus.slots.pending) < 300 // 4  # a few chunk slots hold them
        stats = store.stats()
        assert (stats.pending, stats.in_flight, stats.free_slots) == (300, 0, (1 << 10) - 300)
        store.publish()
        assert store.stats().pending == 0
        # A chunk's slot comes back only when every job cut from it is done; in flight moves
        # with each job all the same.

        def ahead_of_slots():
            stats = store.stats()
            given_back = stats.free_slots - ((1 << 10) - 300)  # events of slots come back
            return stats.in_flight < 300 - given_back and stats

        moving = wait_for(ahead_of_slots, what="in flight to move ahead of the slots given back")
        assert 300 <= moving.in_flight + moving.processed <= 300 + 150  # at most a job apart
        store.flush(timeout=30)
        stats = store.stats()
        assert (stats.pending, stats.in_flight, stats.processed, stats.free_slots) == (0, 0, 300, 1 << 10)


def test_pending_counts_what_drop_oldest_left_and_drain_took():
    d = Dispatcher()
    d.register("p", noop)
    store = EventStore(d, 16, OverrunPolicy.DROP_OLDEST, dlq=DeadLetterQueue())
    store.subscribe_many(Event("p", i) for i in range(20))
    store.subscribe(Event("p", 20))
    stats = store.stats()
    assert (stats.pending, stats.dropped, stats.published) == (16, 5, 21)
    assert stats.pending == sum(store._bus.slots.live[s] for s in store._bus.slots.pending)
    store.drain()
    stats = store.stats()
    assert (stats.pending, stats.dead_letters, stats.state) == (0, 16, "closed")


def test_dead_letters_is_a_running_total_whatever_became_of_the_dlq():
    d = Dispatcher()
    d.register("p", fail, fail)
    with EventStore(d, 64, dlq=DeadLetterQueue()) as store:
        store.subscribe_many(Event("p", i) for i in range(3))
        store.publish()
        assert store.stats().dead_letters == 6 == len(store.dlq)
        assert len(store.dlq.drain()) == 6 and len(store.dlq) == 0
        store.dlq = None  # dead letters with nowhere to go are still counted
        store.subscribe(Event("p", 9))
        store.publish()
        stats = store.stats()
        assert (stats.dead_letters, stats.errors) == (8, 8)


def test_events_with_no_handler_are_counted_as_unhandled_and_logged_at_debug(caplog, start_method):
    d = Dispatcher()
    d.register("known", noop)
    store = EventStore(d, 64, workers=1, start_method=start_method)
    with running(store), caplog.at_level(logging.DEBUG, logger="busmp"):
        store.subscribe_many([Event("known"), Event("typo"), Event("typo"), Event("known")])
        store.publish()
        store.flush(timeout=30)
        assert store.stats().unhandled == 2
        assert store.stats().processed == 2
    assert any(r.levelno == logging.DEBUG and "no handler" in r.getMessage() for r in caplog.records)


def test_sync_mode_counts_unhandled_events_and_names_their_projection(caplog):
    d = Dispatcher()
    d.register("known", noop)
    store = EventStore(d, 64)
    with store, caplog.at_level(logging.DEBUG, logger="busmp"):
        store.subscribe_many([Event("known"), Event("typo"), Event(("other", 1))])
        store.publish()
        assert store.stats().unhandled == 2
    lines = [r.getMessage() for r in caplog.records if "no handler" in r.getMessage()]
    assert lines and "'typo'" in lines[0] and "('other', 1)" in lines[0]


def test_a_batch_handler_alone_makes_an_event_handled():
    d = Dispatcher()
    with EventStore(d, 64) as store:
        store.register_batch("b", 10, lambda ctx, events: None)
        store.subscribe_many([Event("b")] * 3)
        store.publish()
        assert store.stats().unhandled == 0 and store.stats().processed == 3


# -- the shared statistics block --------------------------------------------------------------

def test_the_numpy_layout_and_the_word_layout_agree():
    np = pytest.importorskip("numpy")
    name = unique("layout")
    block = _stats.StatsBlock(name, 1024, 3, 8)
    try:
        block.write_counters(tuple(range(1, 9)))
        block.write_state(_stats.OPEN, 123.5, (1.5, 2.5, 3.5, 4.5), 1000, 7)
        block.set_worker(2, 4242, _stats.BUSY, handled=99)
        line = _stats.WorkerLine(block.block, 1)
        line.started(77, _stats.IDLE, 9.25)
        line.set(_stats.W_HANDLED, 5)
        line.close()
        view = np.ndarray((), dtype=_stats.stats_dtype(3), buffer=block.shm.buf)
        snap = _stats.snapshot(name)
        assert snap is not None
        for field in (*_stats.IDENTITY, *_stats.COUNTERS, *_stats.STATE):
            assert view[field] == snap[field], field
        assert [tuple(snap["worker"][k][f] for f in _stats.WORKER) for k in range(3)] == \
            [tuple(view["worker"][k][f] for f in _stats.WORKER) for k in range(3)]
        assert snap["worker"][1]["pid"] == 77 and snap["worker"][1]["handled"] == 5
        assert snap["worker"][2]["pid"] == 4242 and snap["worker"][2]["state"] == _stats.BUSY
        assert view.dtype.itemsize == 64 * (3 + 3)
        del view
    finally:
        block.close()
    assert _stats.snapshot(name) is None


def test_read_stats_in_another_process_sees_the_same_fields_as_stats():
    d = Dispatcher()
    d.register("p", noop)
    name = unique("sub")
    with EventStore(d, 256, workers=2, start_method="fork", name=name) as store:
        store.subscribe_many(Event("p") for _ in range(100))
        store.publish()
        store.flush(timeout=30)
        time.sleep(3 * TICK_SECONDS)
        code = f"import busmp, json; print(json.dumps(busmp.read_stats({name!r}).to_dict()))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                             timeout=60, check=True)
        theirs = json.loads(out.stdout)
        ours = store.stats().to_dict()
        assert set(theirs) == set(ours)
        for key in ("published", "processed", "errors", "dropped", "pending", "in_flight", "dead_letters",
                    "slots", "free_slots", "workers", "per_worker", "worker_pids", "name", "pid", "state",
                    "pages", "free_pages", "unhandled"):
            assert theirs[key] == ours[key], key
        assert theirs["processed"] == 100 and sum(theirs["per_worker"]) == 100
        assert theirs["pid"] == os.getpid() and theirs["state"] == "open"
        assert all(pid > 0 and pid != os.getpid() for pid in theirs["worker_pids"])
        assert set(theirs["worker_states"]) == {"idle"}


WATCHER = textwrap.dedent("""
    import json, sys, time
    import busmp

    name, total = sys.argv[1], int(sys.argv[2])
    seen = []
    for _ in range(600):
        try:
            stats = busmp.read_stats(name)
        except KeyError:
            break
        seen.append((stats.processed, sum(stats.per_worker), stats.worker_states, stats.worker_since,
                     stats.updated))
        if stats.processed == total:
            break
        time.sleep(0.05)
    print(json.dumps(seen))
""")


def test_read_stats_in_another_process_moves_while_workers_run():
    d = Dispatcher()
    d.register("p", spin)
    name = unique("moving")
    with EventStore(d, 1 << 12, workers=2, start_method="fork", name=name) as store:
        watcher = subprocess.Popen([sys.executable, "-c", WATCHER, name, "1500"], stdout=subprocess.PIPE,
                                   text=True, cwd=ROOT)
        store.subscribe_many(Event("p", 0.002) for _ in range(1500))
        store.publish()
        out, _ = watcher.communicate(timeout=120)
        store.flush(timeout=60)
        seen = json.loads(out)
        processed = [s[0] for s in seen]
        assert processed == sorted(processed), "processed never goes back"
        assert len(set(processed)) >= 3, f"expected the count to move while watched: {processed}"
        assert processed[-1] == 1500
        assert any("busy" in s[2] for s in seen)
        for _, _handled, states, since, _updated in seen:
            for state, at in zip(states, since):
                if state == "busy":  # since when: this job's start, before the reader looked
                    assert 0 < at <= time.time()
        assert [s[1] for s in seen] == sorted(s[1] for s in seen)
        assert wait_for(lambda: read_stats(name).processed_rate > 0, what="a processing rate")
        after = wait_for(lambda: (s := read_stats(name)).processed == 1500 and s, what="the final count")
        assert after.in_flight == 0 and after.pending == 0 and sum(after.per_worker) == 1500


def test_rates_are_events_per_second_over_the_last_second():
    d = Dispatcher()
    d.register("p", noop)
    name = unique("rates")
    with EventStore(d, 1 << 12, name=name) as store:
        start = time.monotonic()
        while time.monotonic() - start < 1.5:
            store.subscribe_many(Event("p") for _ in range(100))
            store.publish()
            time.sleep(0.05)
        stats = read_stats(name)
        # ~2000 events a second go in: the exact figure depends on the machine, the order of size not
        assert 500 < stats.published_rate < 4000, stats.published_rate
        assert stats.processed_rate == pytest.approx(stats.published_rate, rel=0.3)
        time.sleep(RATE_IDLE)
        assert read_stats(name).published_rate == 0.0  # nothing came in during the last second


RATE_IDLE = 1.0 + 3 * TICK_SECONDS


def test_read_stats_of_a_drained_store_is_a_key_error_listing_the_live_names():
    name, other = unique("gone"), unique("other")
    with EventStore(Dispatcher(), 8, name=other):
        store = EventStore(Dispatcher(), 8, name=name)
        assert read_stats(name).state == "open"
        store.drain()
        with pytest.raises(KeyError, match=f"no live busmp store is named '{name}'.*{other}"):
            read_stats(name)
        assert name not in _stats.live_names() and other in _stats.live_names()
        assert not os.path.exists(os.path.join("/dev/shm", _stats.block_name(name)))


OWNER = textwrap.dedent("""
    import sys, time
    from busmp import Dispatcher, Event, EventStore

    def slow(ctx, ev):
        time.sleep(0.01)

    if __name__ == "__main__":
        d = Dispatcher()
        d.register("p", slow)
        store = EventStore(d, 1024, workers=1, name=sys.argv[1], start_method="fork")
        store.subscribe_many(Event("p") for _ in range(500))
        store.publish()
        print("ready", flush=True)
        time.sleep(120)
""")


def test_a_store_whose_process_was_killed_is_not_live_and_its_name_can_be_reused(tmp_path):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    name = unique("killed")
    owner = subprocess.Popen([sys.executable, str(script), name], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
        stats = wait_for(lambda: (s := read_stats(name)).processed > 0 and s, what="the owner's workers")
        assert stats.pid == owner.pid and stats.workers == 1
        assert name in _stats.live_names()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
        owner.stdout.close()
    with pytest.raises(KeyError, match="no live busmp store"):
        read_stats(name)  # at once: the block may still be there, its owner is not
    assert name not in _stats.live_names()
    listed = subprocess.run([sys.executable, "-m", "busmp", "ls"], capture_output=True, text=True, cwd=ROOT,
                            timeout=60, check=True)
    assert name not in listed.stdout
    with EventStore(Dispatcher(), 8, name=name) as reclaimed:
        assert read_stats(name).pid == os.getpid() == reclaimed.stats().pid


def test_a_new_store_sweeps_the_blocks_of_killed_owners():
    name = unique("stale")
    block = _stats.StatsBlock(name, 8, 0, 4)
    try:
        # As if its owner had been killed: line 0 names a process that no longer runs.
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        import struct

        struct.pack_into("<q", block.shm.buf, 16, dead.pid)
        assert name not in _stats.live_names()
        with EventStore(Dispatcher(), 8):
            assert not os.path.exists(os.path.join("/dev/shm", _stats.block_name(name)))
    finally:
        block.view = None
        block._buf = None
        from busmp._transport import shm as _shm

        _shm.release(block.shm, unlink=True)


def test_a_recycled_pid_does_not_make_a_block_live():
    name = unique("recycled")
    block = _stats.StatsBlock(name, 8, 0, 4)
    try:
        assert _stats.snapshot(name) is not None
        started = block.view["owner_start"]
        block.view["owner_start"] = started - 3600  # the pid runs, but it is not the process that wrote this
        assert _stats.snapshot(name) is None and name not in _stats.live_names()
    finally:
        block.close()


# -- logging ------------------------------------------------------------------------------------

def test_the_first_dropped_event_is_a_warning_then_counts_are_rate_limited(caplog):
    d = Dispatcher()
    d.register("p", noop)
    with caplog.at_level(logging.WARNING, logger="busmp"):
        with EventStore(d, 4, OverrunPolicy.DROP_OLDEST, name=unique("drops")) as store:
            for i in range(50):
                store.subscribe(Event("p", i))
            assert store.stats().dropped == 46
            lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
            assert len(lines) == 1, lines  # the first; the rest wait for the next report
            assert unique("drops") in lines[0] and "DROP_OLDEST" in lines[0] and "buffer_size" in lines[0]
        lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
        assert len(lines) == 2 and "45 more" in lines[1] and "46 in all" in lines[1], lines
    assert all(r.levelno == logging.WARNING for r in caplog.records if "dropped" in r.getMessage())


def test_a_store_dropped_without_drain_is_a_warning(caplog):
    d = Dispatcher()
    d.register("p", noop)
    name = unique("undrained")
    with caplog.at_level(logging.WARNING, logger="busmp"):
        store = EventStore(d, 16, name=name)
        store.subscribe(Event("p"))
        del store
        gc.collect()
    lines = [r.getMessage() for r in caplog.records if "without drain()" in r.getMessage()]
    assert len(lines) == 1 and name in lines[0] and "1 pending" in lines[0], lines
    with pytest.raises(KeyError):
        read_stats(name)


def test_a_drained_store_logs_no_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="busmp"):
        with EventStore(Dispatcher(), 16) as store:
            store.subscribe(Event("p"))
            store.publish()
    assert not caplog.records


def test_worker_start_exit_crash_and_replacement_are_logged(caplog):
    d = Dispatcher()
    d.register("p", noop)
    name = unique("workers")
    with caplog.at_level(logging.INFO, logger="busmp"):
        store = EventStore(d, 64, workers=1, start_method="fork", name=name)
        with running(store):
            first = store._bus.executor.handles[0].process.pid
            wait_for(lambda: read_stats(name).worker_pids == (first,), what="the worker's pid")
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: (s := read_stats(name)).worker_pids[0] not in (0, first)
                     and s.worker_states == ("idle",), what="a replacement")
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"worker 0 started (pid {first})" in m for m in messages), messages
    crash = [r for r in caplog.records if "died" in r.getMessage()]
    assert crash and crash[0].levelno == logging.WARNING and str(first) in crash[0].getMessage()
    assert any("replaced" in m and f"from pid {first}" in m for m in messages), messages
    assert any("exited with code" in m for m in messages), messages
    assert all(name in m for m in messages if "worker" in m)


def test_busmp_installs_no_log_handler():
    assert logging.getLogger("busmp").handlers == []
    assert busmp.read_stats is read_stats


def test_read_stats_imports_neither_numpy_nor_the_store_machinery():
    code = ("import sys, busmp\n"
            "try:\n    busmp.read_stats('nobody-here')\nexcept KeyError:\n    pass\n"
            "print('numpy' in sys.modules, 'busmp._store' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         check=True)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_a_reader_process_leaves_the_block_alone_when_it_exits():
    """Attaching a SharedMemory would register it with the reader's resource tracker, which
    unlinks it at the reader's exit (Python < 3.13): readers must not."""
    name = unique("reader")
    with EventStore(Dispatcher(), 8, name=name):
        for _ in range(2):
            out = subprocess.run([sys.executable, "-c", f"import busmp; print(busmp.read_stats({name!r}).name)"],
                                 capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
            assert out.stdout.strip() == name and "resource_tracker" not in out.stderr
        assert read_stats(name).name == name


def test_a_closed_block_whose_owner_still_runs_is_not_swept_by_others():
    """Between writing CLOSED and unlinking its block a store may take a while (stopping its
    workers, shutting down a Ray cluster); a sweep in another store's creation must leave the
    block to its owner, whose resource tracker would otherwise find it gone."""
    store = EventStore(Dispatcher(), name="closing-owner")
    block = busmp._store.bus_of(store).stats_block
    try:
        block.write_state(_stats.CLOSED, time.time(), (0.0, 0.0, 0.0, 0.0), 0, 0)
        _stats.sweep()
        assert os.path.exists(os.path.join("/dev/shm", _stats.block_name("closing-owner")))
        with pytest.raises(KeyError):
            read_stats("closing-owner")
        assert "closing-owner" not in _stats.live_names()
    finally:
        store.drain()
    assert not os.path.exists(os.path.join("/dev/shm", _stats.block_name("closing-owner")))
