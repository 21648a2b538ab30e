"""Specification of the middleware helpers: with_retry and the backoff schedules."""

from __future__ import annotations

import math
import time

import pytest

from busmp import (
    Context,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    Result,
    constant_backoff,
    exponential_backoff,
    with_retry,
)


class Flaky:
    """A handler that fails its first ``failures`` calls, then returns Result("ok")."""

    def __init__(self, failures):
        self.failures = failures
        self.calls = 0

    def __call__(self, ctx, ev):
        self.calls += 1
        if self.calls <= self.failures:
            raise ValueError(f"failure {self.calls}")
        return Result("ok")


# --------------------------------------------------------------------------- with_retry, direct


def test_with_retry_returns_the_handler_result_without_retrying_on_success():
    handler = Flaky(failures=0)
    wrapped = with_retry(3)(handler)
    assert wrapped(Context(), Event("p")) == Result("ok")
    assert handler.calls == 1


def test_with_retry_3_failing_once_calls_the_handler_twice():
    handler = Flaky(failures=1)
    wrapped = with_retry(3)(handler)
    assert wrapped(Context(), Event("p")) == Result("ok")
    assert handler.calls == 2


def test_with_retry_2_always_failing_calls_three_times_and_raises_the_last_error():
    handler = Flaky(failures=10**9)
    wrapped = with_retry(2)(handler)
    with pytest.raises(ValueError, match="failure 3"):
        wrapped(Context(), Event("p"))
    assert handler.calls == 3


def test_with_retry_0_calls_the_handler_exactly_once():
    handler = Flaky(failures=10**9)
    with pytest.raises(ValueError):
        with_retry(0)(handler)(Context(), Event("p"))
    assert handler.calls == 1


@pytest.mark.parametrize("retries", [-1, -5])
def test_with_retry_negative_retries_is_value_error(retries):
    with pytest.raises(ValueError):
        with_retry(retries)


def test_with_retry_calls_backoff_with_one_based_retry_numbers():
    asked = []

    def backoff(n):
        asked.append(n)
        return 0.0

    handler = Flaky(failures=10**9)
    with pytest.raises(ValueError):
        with_retry(4, backoff)(handler)(Context(), Event("p"))
    assert asked == [1, 2, 3, 4]
    assert handler.calls == 5


def test_with_retry_does_not_call_backoff_after_the_final_failure_or_on_success():
    asked = []

    def backoff(n):
        asked.append(n)
        return 0.0

    handler = Flaky(failures=2)
    assert with_retry(5, backoff)(handler)(Context(), Event("p")) == Result("ok")
    assert asked == [1, 2]


def test_with_retry_waits_the_backoff_before_a_retry():
    handler = Flaky(failures=1)
    start = time.perf_counter()
    with_retry(1, constant_backoff(0.05))(handler)(Context(), Event("p"))
    assert time.perf_counter() - start >= 0.045
    assert handler.calls == 2


def test_deadline_passing_during_a_backoff_wait_ends_retries_with_timeout_error():
    handler = Flaky(failures=10**9)
    wrapped = with_retry(100, constant_backoff(0.05))(handler)
    ctx = Context().with_timeout(0.3)
    with pytest.raises(TimeoutError):
        wrapped(ctx, Event("p"))
    assert 1 <= handler.calls < 101


def test_deadline_shorter_than_the_first_backoff_ends_retries_after_one_call():
    handler = Flaky(failures=10**9)
    wrapped = with_retry(5, constant_backoff(30))(handler)
    start = time.perf_counter()
    with pytest.raises(TimeoutError):
        wrapped(Context().with_timeout(0.05), Event("p"))
    assert handler.calls == 1
    assert time.perf_counter() - start < 10  # never sat out the 30 s backoff


# --------------------------------------------------------------------------- with_retry in a store


def test_with_retry_in_a_store_failing_once_is_handled_without_dead_letter():
    handler = Flaky(failures=1)
    d = Dispatcher()
    d.register("p", handler)
    dlq = DeadLetterQueue()
    with EventStore(d, 8, dlq=dlq) as store:
        store.use(with_retry(3))
        store.subscribe(Event("p"))
        store.publish()
        assert handler.calls == 2
        assert len(dlq) == 0
        assert store.metrics() == (1, 1, 0)


def test_with_retry_2_in_a_store_always_failing_gives_three_calls_and_one_dead_letter():
    handler = Flaky(failures=10**9)
    d = Dispatcher()
    d.register("p", handler)
    dlq = DeadLetterQueue()
    with EventStore(d, 8, dlq=dlq) as store:
        store.use(with_retry(2))
        store.subscribe(Event("p", id="ev-1"))
        store.publish()
        assert handler.calls == 3
        letters = dlq.entries()
        assert len(letters) == 1
        assert letters[0].event.id == "ev-1"
        assert isinstance(letters[0].error, ValueError)
        assert store.metrics() == (1, 1, 1)


# --------------------------------------------------------------------------- backoff schedules


def test_constant_backoff_returns_the_same_delay_for_every_retry():
    backoff = constant_backoff(0.25)
    assert [backoff(n) for n in (1, 2, 7, 1000)] == [0.25, 0.25, 0.25, 0.25]


def test_exponential_backoff_doubles_from_the_base():
    backoff = exponential_backoff(0.1)
    assert [backoff(n) for n in range(1, 6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_exponential_backoff_is_capped():
    backoff = exponential_backoff(0.1, cap=0.5)
    assert [backoff(n) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5, 0.5])


def test_exponential_backoff_at_40_retries_is_still_exact():
    assert exponential_backoff(0.1)(40) == pytest.approx(0.1 * 2**39)


def test_capped_exponential_backoff_stays_positive_finite_and_capped_up_to_10000_retries():
    backoff = exponential_backoff(0.1, cap=30.0)
    previous = 0.0
    for n in range(1, 10_001):
        delay = backoff(n)
        assert 0 < delay <= 30.0, (n, delay)
        assert math.isfinite(delay), (n, delay)
        assert delay >= previous, (n, delay, previous)
        previous = delay
    assert backoff(10_000) == 30.0


def test_uncapped_exponential_backoff_never_goes_negative_zero_or_nan_up_to_10000_retries():
    backoff = exponential_backoff(0.1)
    previous = 0.0
    for n in range(1, 10_001):
        delay = backoff(n)
        assert not math.isnan(delay), n
        assert delay > 0, (n, delay)
        assert delay >= previous, (n, delay, previous)
        previous = delay
