"""Specification of schedule / schedule_after and Timer in a sync-mode store."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from busmp import Context, Dispatcher, Event, EventStore, Timer

#: A timer may fire late under load, but within this many seconds of its due time.
LATE_BOUND = 1.0
#: Our clock and the store's clock may disagree by clock resolution only.
CLOCK_SLACK = 0.005


class Probe:
    """A handler that records when (wall clock) and with what it ran."""

    def __init__(self):
        self.calls = []
        self.fired = threading.Event()

    def __call__(self, ctx, ev):
        self.calls.append((time.time(), ev.data, ctx.value("k")))
        self.fired.set()

    @property
    def times(self):
        return [t for t, _, _ in self.calls]


def probe_store(size=8):
    probe = Probe()
    d = Dispatcher()
    d.register("tick", probe)
    return probe, EventStore(d, size)


def as_epoch(when):
    return when.timestamp() if isinstance(when, datetime) else float(when)


# --------------------------------------------------------------------------- past and now


@pytest.mark.parametrize(
    "when",
    [
        lambda: datetime.now(timezone.utc) - timedelta(seconds=5),
        lambda: datetime(2000, 1, 1),
        lambda: time.time() - 5,
        lambda: time.time(),
        lambda: datetime.now(timezone.utc),
        lambda: datetime.now(timezone(timedelta(hours=-8))) - timedelta(seconds=1),
    ],
    ids=["past-utc-datetime", "past-naive-datetime", "past-float", "now-float", "now-datetime",
         "past-datetime-other-zone"],
)
def test_schedule_at_a_past_or_present_time_handles_before_returning_and_returns_none(when):
    probe, store = probe_store()
    with store:
        assert store.schedule(when(), Event("tick", "now")) is None
        assert [data for _, data, _ in probe.calls] == ["now"]


@pytest.mark.parametrize("delay", [0, 0.0, -1, -0.5, timedelta(0), timedelta(seconds=-3)])
def test_schedule_after_zero_or_negative_delay_handles_before_returning_and_returns_none(delay):
    probe, store = probe_store()
    with store:
        assert store.schedule_after(delay, Event("tick", "now")) is None
        assert [data for _, data, _ in probe.calls] == ["now"]


def test_synchronous_schedule_passes_the_context_to_the_handler():
    probe, store = probe_store()
    with store:
        store.schedule(time.time() - 1, Event("tick"), Context({"k": "v"}))
    assert probe.calls[0][2] == "v"


# --------------------------------------------------------------------------- future


def test_schedule_in_the_future_returns_a_timer_with_its_due_time():
    probe, store = probe_store()
    with store:
        due = time.time() + 60
        timer = store.schedule(due, Event("tick"))
        try:
            assert isinstance(timer, Timer)
            assert as_epoch(timer.when) == pytest.approx(due, abs=0.01)
            assert probe.calls == []
        finally:
            timer.cancel()


def test_schedule_at_a_future_float_time_fires_at_that_time():
    probe, store = probe_store()
    with store:
        due = time.time() + 0.1
        timer = store.schedule(due, Event("tick", "later"), Context({"k": "v"}))
        assert timer is not None
        assert probe.fired.wait(due - time.time() + LATE_BOUND + 1)
        [(fired_at, data, k)] = probe.calls
        assert data == "later"
        assert k == "v"
        assert due - CLOCK_SLACK <= fired_at <= due + LATE_BOUND


def test_schedule_after_a_delay_in_seconds_fires_after_that_delay():
    probe, store = probe_store()
    with store:
        start = time.time()
        timer = store.schedule_after(0.1, Event("tick"))
        assert isinstance(timer, Timer)
        assert as_epoch(timer.when) == pytest.approx(start + 0.1, abs=0.05)
        assert probe.fired.wait(LATE_BOUND + 1)
        assert start + 0.1 - CLOCK_SLACK <= probe.times[0] <= start + 0.1 + LATE_BOUND


def test_schedule_after_a_timedelta_fires_after_that_delay():
    probe, store = probe_store()
    with store:
        start = time.time()
        timer = store.schedule_after(timedelta(milliseconds=100), Event("tick"))
        assert isinstance(timer, Timer)
        assert probe.fired.wait(LATE_BOUND + 1)
        assert start + 0.1 - CLOCK_SLACK <= probe.times[0] <= start + 0.1 + LATE_BOUND


@pytest.mark.parametrize("zone", [timezone.utc, timezone(timedelta(hours=5)), timezone(timedelta(hours=-7))])
def test_schedule_with_a_timezone_aware_datetime_fires_at_that_instant(zone):
    probe, store = probe_store()
    with store:
        due = datetime.now(zone) + timedelta(milliseconds=100)
        timer = store.schedule(due, Event("tick"))
        assert isinstance(timer, Timer)
        assert probe.fired.wait(LATE_BOUND + 1)
        due_epoch = due.timestamp()
        assert due_epoch - CLOCK_SLACK <= probe.times[0] <= due_epoch + LATE_BOUND


def test_timer_fires_only_once():
    probe, store = probe_store()
    with store:
        store.schedule_after(0.05, Event("tick"))
        assert probe.fired.wait(LATE_BOUND + 1)
        time.sleep(0.1)
        store.publish()
        assert len(probe.calls) == 1


# --------------------------------------------------------------------------- cancel


def test_cancel_before_firing_returns_true_and_the_event_never_fires():
    probe, store = probe_store()
    with store:
        timer = store.schedule_after(0.15, Event("tick"))
        assert timer.cancel() is True
        assert not probe.fired.wait(0.4)
        assert store.publish() == 0
        assert probe.calls == []


def test_cancel_after_firing_returns_false():
    probe, store = probe_store()
    with store:
        timer = store.schedule_after(0.05, Event("tick"))
        assert probe.fired.wait(LATE_BOUND + 1)
        time.sleep(0.05)  # let the timer finish its bookkeeping
        assert timer.cancel() is False
        assert len(probe.calls) == 1
