"""Leaving a store: Ctrl-C in a ``with`` block is prompt, and a drain timeout is a deadline."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, StoreClosed

CTRL_C = textwrap.dedent("""
    import os, signal, sys, threading, time
    from busmp import DeadLetterQueue, Dispatcher, Event, EventStore, StoreClosed

    def slow(ctx, ev):
        time.sleep(0.02)

    if __name__ == "__main__":
        d = Dispatcher()
        d.register("p", slow)
        dlq = DeadLetterQueue()
        interrupted_at = []
        def interrupt():
            time.sleep(1.0)
            interrupted_at.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
        try:
            with EventStore(d, 1 << 12, workers=2, dlq=dlq, start_method=sys.argv[1]) as store:
                store.subscribe_many([Event("p", i) for i in range(3000)])  # a minute of work
                store.publish()
                threading.Thread(target=interrupt, daemon=True).start()
                store.flush()
        except KeyboardInterrupt:
            took = time.monotonic() - interrupted_at[0]
            closed = sum(isinstance(letter.error, StoreClosed) for letter in dlq.entries())
            p, processed, errors = store.metrics()
            print(f"{took:.2f} {p} {processed - errors} {closed} {len(dlq)}", flush=True)
            raise
""")


@pytest.mark.parametrize("start_method", ["fork", "forkserver"])
def test_ctrl_c_in_a_with_block_closes_promptly_and_every_event_is_handled_or_a_dead_letter(start_method, tmp_path):
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C)
    done = subprocess.run([sys.executable, str(script), start_method], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -signal.SIGINT, done.stderr[-2000:]  # the KeyboardInterrupt propagated
    assert "KeyboardInterrupt" in done.stderr
    took, published, succeeded, closed, letters = done.stdout.split()
    assert float(took) < 3.0  # one second of grace for events in a worker, not the whole backlog
    assert int(published) == 3000
    assert int(succeeded) + int(closed) == 3000  # nothing vanished, nothing twice
    assert int(closed) == int(letters) > 0       # the backlog became StoreClosed dead letters


def test_an_exception_in_a_with_block_in_sync_mode_dead_letters_what_was_never_published():
    dlq = DeadLetterQueue()
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with pytest.raises(ZeroDivisionError):
        with EventStore(d, 8, dlq=dlq) as store:
            store.subscribe(Event("p", 1))
            1 / 0
    assert [type(letter.error) for letter in dlq.entries()] == [StoreClosed]
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p", 2))


@pytest.mark.parametrize("start_method", ["fork"])
def test_drain_timeout_is_a_deadline_for_the_whole_call(start_method):
    dlq = DeadLetterQueue()
    d = Dispatcher()
    d.register("p", lambda ctx, ev: time.sleep(30))
    store = EventStore(d, 8, workers=2, dlq=dlq, start_method=start_method)
    store.subscribe(Event("p", 1))
    store.subscribe(Event("p", 2))
    store.publish()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        store.drain(timeout=1.0)
    assert time.monotonic() - started < 2.0
    assert sorted(type(letter.error).__name__ for letter in dlq.entries()) == ["StoreClosed", "StoreClosed"]


def boom(ctx, ev):
    return 1 / 0


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_worker_error_arrives_with_its_remote_traceback_as_cause_and_a_note(start_method):
    dlq = DeadLetterQueue()
    d = Dispatcher()
    d.register("p", boom, lambda ctx, ev: [][1])  # a lambda travels by value (cloudpickle)
    with EventStore(d, 8, workers=1, dlq=dlq, start_method=start_method) as store:
        store.subscribe(Event("p"))
        store.publish()
        store.flush(timeout=20)
    first, second = (letter.error for letter in dlq.entries())
    assert type(first) is ZeroDivisionError and type(second) is IndexError
    for error, line in ((first, "return 1 / 0"), (second, "lambda ctx, ev: [][1]")):
        cause = str(error.__cause__)
        assert type(error.__cause__).__name__ == "RemoteTraceback"
        assert __file__ in cause and line in cause  # the real file and its source line
        if sys.version_info >= (3, 11):
            assert any("raised in busmp worker process" in note for note in error.__notes__)
