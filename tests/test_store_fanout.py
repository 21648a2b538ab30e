"""Specification of a sync-mode (workers=0) EventStore: fan-out, publish, metrics, hooks,
middleware, follow-up events, lifecycle and constructor validation."""

from __future__ import annotations

import threading
import time

import pytest

from busmp import (
    BLOCK,
    DROP_OLDEST,
    RETURN_ERROR,
    BusError,
    Context,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    Metrics,
    OverrunPolicy,
    Result,
    StoreClosed,
)


def recorder(log, name):
    def handler(ctx, ev):
        log.append((name, ev.data))

    handler.__qualname__ = name
    return handler


def failing(exc):
    def handler(ctx, ev):
        raise exc

    return handler


# --------------------------------------------------------------------------- fan-out


def test_fan_out_runs_handlers_in_registration_order():
    log = []
    d = Dispatcher()
    d.register("p", recorder(log, "a"), recorder(log, "b"))
    d.register("p", recorder(log, "c"))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        store.publish()
    assert log == [("a", 1), ("b", 1), ("c", 1)]


def test_events_are_dispatched_in_subscription_order():
    log = []
    d = Dispatcher()
    d.register("p", recorder(log, "h"))
    with EventStore(d, 8) as store:
        for i in range(5):
            store.subscribe(Event("p", i))
        store.publish()
    assert [data for _, data in log] == [0, 1, 2, 3, 4]


def test_a_failing_handler_does_not_stop_the_other_handlers():
    log = []
    d = Dispatcher()
    d.register("p", recorder(log, "a"), failing(ValueError("boom")), recorder(log, "c"))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        store.publish()
        assert log == [("a", 1), ("c", 1)]
        assert store.metrics() == (1, 3, 1)


def test_sync_publish_does_not_raise_handler_exceptions():
    d = Dispatcher()
    d.register("p", failing(RuntimeError("boom")))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        assert store.publish() == 1


def test_event_without_handler_is_consumed_silently():
    d = Dispatcher()
    with EventStore(d, 8) as store:
        store.subscribe(Event("nobody-listens"))
        assert store.publish() == 1
        assert store.publish() == 0
        assert store.metrics() == (1, 0, 0)


# --------------------------------------------------------------------------- what handlers receive


def test_handler_receives_the_event_as_subscribed_with_id_data_and_args_intact():
    received = []
    d = Dispatcher()
    d.register(("order", 7), lambda ctx, ev: received.append(ev))
    event = Event(("order", 7), data={"items": [1, 2], "note": "é"}, id="caller-id-1", args={"legacy": 1})
    with EventStore(d, 8) as store:
        store.subscribe(event)
        store.publish()
    assert received == [event]
    assert received[0].id == "caller-id-1"


def test_sync_handlers_receive_the_very_objects_subscribed():
    """Sync mode hands over the objects themselves, as any in-process bus does; the pickle
    taken at subscribe only proves that the event could travel to a worker."""
    received = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: received.append(ev))
    one, many, grouped = Event("p", {"n": 1}), [Event("p", {"n": i}) for i in range(40)], Event("p", [])
    with EventStore(d, 64) as store:
        store.subscribe(one)
        store.subscribe_many(many)
        store.publish()
        with store.begin_transaction() as tx:
            tx.publish(grouped)
    assert len(received) == 42
    assert all(got is sent for got, sent in zip(received, [one, *many, grouped]))


def test_events_never_published_become_dead_letters_as_subscribed():
    d = Dispatcher()
    dlq = DeadLetterQueue()
    events = [Event("p", i) for i in range(5)]
    store = EventStore(d, 8, dlq=dlq)
    store.subscribe_many(events[:3])
    store.subscribe(events[3])
    store.subscribe(events[4])
    store.drain()
    assert [dl.event for dl in dlq.entries()] == events
    assert all(dl.event is ev for dl, ev in zip(dlq.entries(), events))


@pytest.mark.parametrize("size", [0, 100, 1_000, 100_000, 1_000_000])
def test_payloads_of_any_size_arrive_intact(size):
    received = []
    d = Dispatcher()
    d.register("blob", lambda ctx, ev: received.append(ev.data))
    payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    with EventStore(d, 4) as store:
        store.subscribe(Event("blob", payload, id="big"))
        store.subscribe(Event("blob", b"small"))
        store.publish()
    assert received == [payload, b"small"]


# --------------------------------------------------------------------------- publish


def test_publish_twice_dispatches_once():
    log = []
    d = Dispatcher()
    d.register("p", recorder(log, "h"))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        store.publish()
        store.publish()
        assert log == [("h", 1)]
        assert store.metrics() == (1, 1, 0)


def test_publish_on_empty_store_returns_zero_and_changes_nothing():
    log = []
    d = Dispatcher()
    d.register("p", recorder(log, "h"))
    with EventStore(d, 8) as store:
        assert store.publish() == 0
        assert store.metrics() == (0, 0, 0)
        assert log == []


def test_publish_returns_the_number_of_events_taken():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        for i in range(3):
            store.subscribe(Event("p", i))
        store.subscribe(Event("unrouted"))
        assert store.publish() == 4
        store.subscribe(Event("p"))
        assert store.publish() == 1


# --------------------------------------------------------------------------- metrics


def test_metrics_is_a_named_tuple_that_unpacks():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        store.publish()
        metrics = store.metrics()
        assert isinstance(metrics, Metrics)
        assert isinstance(metrics, tuple)
        published, processed, errors = metrics
        assert (published, processed, errors) == (1, 1, 0)
        assert (metrics.published, metrics.processed, metrics.errors) == (1, 1, 0)


def test_metrics_count_subscribes_handler_invocations_and_failed_invocations():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None, failing(ValueError("x")))
    d.register("q", lambda ctx, ev: None)
    with EventStore(d, 16) as store:
        for i in range(3):
            store.subscribe(Event("p", i))
        store.subscribe(Event("q"))
        store.subscribe(Event("unrouted"))
        assert store.metrics() == (5, 0, 0)
        store.publish()
        assert store.metrics() == (5, 7, 3)


def test_failing_handler_gives_metrics_1_1_1_and_fires_before_after_and_error_hooks():
    boom = ValueError("boom")
    d = Dispatcher()
    d.register("p", failing(boom))
    before, after, errors = [], [], []
    event = Event("p", id="ev-1")
    with EventStore(d, 8) as store:
        store.on_before(lambda ctx, ev: before.append(ev))
        store.on_after(lambda ctx, ev, res, exc: after.append((ev, res, exc)))
        store.on_error(lambda ctx, ev, exc: errors.append((ev, exc)))
        store.subscribe(event)
        store.publish()
        assert store.metrics() == (1, 1, 1)
    assert before == [event]
    assert len(after) == 1
    assert after[0][0] == event
    assert after[0][2] is boom
    assert errors == [(event, boom)]


def test_on_after_fires_when_the_handler_raises_with_the_exception():
    boom = KeyError("k")
    d = Dispatcher()
    d.register("p", failing(boom))
    after = []
    with EventStore(d, 8) as store:
        store.on_after(lambda ctx, ev, res, exc: after.append((res, exc)))
        store.subscribe(Event("p"))
        store.publish()
    assert len(after) == 1
    result, exc = after[0]
    assert exc is boom
    assert isinstance(result, Result)


def test_on_after_gets_empty_result_when_the_handler_returns_none():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    after = []
    with EventStore(d, 8) as store:
        store.on_after(lambda ctx, ev, res, exc: after.append((res, exc)))
        store.subscribe(Event("p"))
        store.publish()
    assert after == [(Result(), None)]


def test_on_after_gets_the_result_the_handler_returned():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: Result("done", ev.data * 2))
    after = []
    with EventStore(d, 8) as store:
        store.on_after(lambda ctx, ev, res, exc: after.append((res, exc)))
        store.subscribe(Event("p", 21))
        store.publish()
    assert after == [(Result("done", 42), None)]


def test_hooks_fire_once_per_event_and_handler():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None, lambda ctx, ev: None)
    before, after = [], []
    with EventStore(d, 8) as store:
        store.on_before(lambda ctx, ev: before.append(ev.data))
        store.on_after(lambda ctx, ev, res, exc: after.append(ev.data))
        store.subscribe(Event("p", 1))
        store.subscribe(Event("p", 2))
        store.publish()
    assert sorted(before) == [1, 1, 2, 2]
    assert sorted(after) == [1, 1, 2, 2]


def test_on_error_does_not_fire_for_successful_handlers():
    d = Dispatcher()
    d.register("p", lambda ctx, ev: None)
    errors = []
    with EventStore(d, 8) as store:
        store.on_error(lambda ctx, ev, exc: errors.append(exc))
        store.subscribe(Event("p"))
        store.publish()
    assert errors == []


def test_before_hook_runs_before_the_handler_and_after_hook_after_it():
    log = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append("handler"))
    with EventStore(d, 8) as store:
        store.on_before(lambda ctx, ev: log.append("before"))
        store.on_after(lambda ctx, ev, res, exc: log.append("after"))
        store.subscribe(Event("p"))
        store.publish()
    assert log == ["before", "handler", "after"]


# --------------------------------------------------------------------------- context


def test_context_passed_to_subscribe_reaches_the_handler():
    seen = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ctx.value("user")))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"), Context({"user": "ann"}))
        store.subscribe(Event("p"), ctx=Context({"user": "bob"}))
        store.publish()
    assert seen == ["ann", "bob"]


def test_handler_gets_a_context_even_when_subscribe_had_none():
    seen = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ctx))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        store.publish()
    assert len(seen) == 1
    assert isinstance(seen[0], Context)


def test_emit_inside_a_handler_gets_the_follow_up_handled():
    seen = []
    d = Dispatcher()
    d.register("order.placed", lambda ctx, ev: ctx.emit(Event("invoice.issued", ev.data)))
    d.register("invoice.issued", lambda ctx, ev: seen.append(ev.data))
    with EventStore(d, 8) as store:
        store.subscribe(Event("order.placed", "ord-1"))
        store.publish()
        store.flush()
        assert seen == ["ord-1"]
        published, processed, errors = store.metrics()
        assert published == 2
        assert processed == 2
        assert errors == 0


def test_emitted_follow_up_carries_the_emitting_handlers_context():
    seen = []
    d = Dispatcher()
    d.register("order.placed", lambda ctx, ev: ctx.emit(Event("invoice.issued")))
    d.register("invoice.issued", lambda ctx, ev: seen.append(ctx.value("trace")))
    with EventStore(d, 8) as store:
        store.subscribe(Event("order.placed"), Context({"trace": "t-1"}))
        store.publish()
        store.flush()
    assert seen == ["t-1"]


def test_emit_cascade_is_fully_handled_after_flush():
    seen = []
    d = Dispatcher()

    def countdown(ctx, ev):
        seen.append(ev.data)
        if ev.data > 0:
            ctx.emit(Event("tick", ev.data - 1))

    d.register("tick", countdown)
    with EventStore(d, 4) as store:
        store.subscribe(Event("tick", 5))
        store.publish()
        store.flush()
        assert seen == [5, 4, 3, 2, 1, 0]
        assert store.metrics().published == 6


# --------------------------------------------------------------------------- middleware


def test_middleware_order_first_registered_is_outermost():
    log = []

    def named(name):
        def middleware(handler):
            def wrapped(ctx, ev):
                log.append(f"{name}>")
                result = handler(ctx, ev)
                log.append(f"<{name}")
                return result

            return wrapped

        return middleware

    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append("h"))
    with EventStore(d, 8) as store:
        store.use(named("m1"))
        store.use(named("m2"))
        store.subscribe(Event("p"))
        store.publish()
    assert log == ["m1>", "m2>", "h", "<m2", "<m1"]


def test_each_fan_out_handler_gets_its_own_middleware_chain():
    log = []

    def middleware(handler):
        def wrapped(ctx, ev):
            log.append("mw>")
            result = handler(ctx, ev)
            log.append("<mw")
            return result

        return wrapped

    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append("h1"), lambda ctx, ev: log.append("h2"))
    with EventStore(d, 8) as store:
        store.use(middleware)
        store.subscribe(Event("p"))
        store.publish()
    assert log == ["mw>", "h1", "<mw", "mw>", "h2", "<mw"]


def test_middleware_result_is_what_the_after_hook_sees():
    def upper(handler):
        def wrapped(ctx, ev):
            result = handler(ctx, ev)
            return Result(result.message.upper())

        return wrapped

    d = Dispatcher()
    d.register("p", lambda ctx, ev: Result("ok"))
    after = []
    with EventStore(d, 8) as store:
        store.use(upper)
        store.on_after(lambda ctx, ev, res, exc: after.append(res))
        store.subscribe(Event("p"))
        store.publish()
    assert after == [Result("OK")]


def test_middleware_is_not_applied_to_batch_handlers():
    wrapped_calls = []
    batches = []

    def middleware(handler):
        def wrapped(ctx, ev):
            wrapped_calls.append(ev)
            return handler(ctx, ev)

        return wrapped

    d = Dispatcher()
    with EventStore(d, 8) as store:
        store.use(middleware)
        store.register_batch("p", 10, lambda ctx, events: batches.append(list(events)))
        store.subscribe(Event("p", 1))
        store.subscribe(Event("p", 2))
        store.publish()
    assert [[e.data for e in b] for b in batches] == [[1, 2]]
    assert wrapped_calls == []


# --------------------------------------------------------------------------- late registration


def test_registration_after_the_store_was_built_takes_effect_at_next_publish():
    log = []
    d = Dispatcher()
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        d.register("p", recorder(log, "late"))
        store.publish()
        d.register("p", recorder(log, "later"))
        store.subscribe(Event("p", 2))
        store.publish()
    assert log == [("late", 1), ("late", 2), ("later", 2)]


def test_middleware_added_after_a_publish_applies_to_the_next_publish():
    log = []

    def middleware(handler):
        def wrapped(ctx, ev):
            log.append("mw")
            return handler(ctx, ev)

        return wrapped

    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append(ev.data))
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        store.publish()
        store.use(middleware)
        store.subscribe(Event("p", 2))
        store.publish()
    assert log == [1, "mw", 2]


# --------------------------------------------------------------------------- lifecycle


def test_subscribe_after_drain_raises_store_closed():
    store = EventStore(Dispatcher(), 8)
    store.drain()
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p"))


def test_subscribe_many_after_drain_raises_store_closed():
    store = EventStore(Dispatcher(), 8)
    store.drain()
    with pytest.raises(StoreClosed):
        store.subscribe_many([Event("p")])


def test_publish_after_drain_raises_store_closed():
    store = EventStore(Dispatcher(), 8)
    store.drain()
    with pytest.raises(StoreClosed):
        store.publish()


def test_store_closed_is_a_bus_error():
    assert issubclass(StoreClosed, BusError)


def test_drain_is_idempotent():
    store = EventStore(Dispatcher(), 8)
    store.drain()
    store.drain()
    store.close()
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p"))


def test_close_drains_the_store():
    store = EventStore(Dispatcher(), 8)
    store.close()
    with pytest.raises(StoreClosed):
        store.publish()


def test_context_manager_returns_the_store_and_drains_on_exit():
    with EventStore(Dispatcher(), 8) as store:
        assert isinstance(store, EventStore)
        store.subscribe(Event("p"))
    with pytest.raises(StoreClosed):
        store.subscribe(Event("p"))


def test_context_manager_drains_when_the_block_raises():
    with pytest.raises(ZeroDivisionError):
        with EventStore(Dispatcher(), 8) as store:
            1 / 0
    with pytest.raises(StoreClosed):
        store.publish()


def test_flush_waits_for_a_publish_running_in_another_thread():
    release = threading.Event()
    started = threading.Event()
    done = []

    def slow(ctx, ev):
        started.set()
        release.wait(10)
        done.append(ev.data)

    d = Dispatcher()
    d.register("p", slow)
    with EventStore(d, 8) as store:
        store.subscribe(Event("p", 1))
        publisher = threading.Thread(target=store.publish)
        publisher.start()
        assert started.wait(10)
        with pytest.raises(TimeoutError):
            store.flush(timeout=0.05)
        assert done == []
        release.set()
        store.flush(timeout=10)
        assert done == [1]
        publisher.join(10)


def test_flush_in_sync_mode_with_nothing_pending_returns_at_once():
    with EventStore(Dispatcher(), 8) as store:
        started = time.monotonic()
        store.flush()
        store.flush(timeout=1.0)
        assert time.monotonic() - started < 0.5
        assert store.stats().in_flight == 0


# --------------------------------------------------------------------------- constructor validation


@pytest.mark.parametrize("size", [3, 0, -1, 6, 1000])
def test_buffer_size_that_is_not_a_power_of_two_is_value_error(size):
    with pytest.raises(ValueError):
        EventStore(Dispatcher(), size)


@pytest.mark.parametrize("size", [1, 2, 8, 1024])
def test_buffer_size_power_of_two_is_accepted(size):
    with EventStore(Dispatcher(), size) as store:
        store.subscribe(Event("p"))
        assert store.publish() == 1


def test_negative_workers_is_value_error():
    with pytest.raises(ValueError):
        EventStore(Dispatcher(), 8, workers=-1)


@pytest.mark.parametrize("policy", ["block", "BLOCK", 1, None])
def test_policy_that_is_not_an_overrun_policy_is_value_error(policy):
    with pytest.raises(ValueError):
        EventStore(Dispatcher(), 8, policy)


@pytest.mark.parametrize("policy", [DROP_OLDEST, BLOCK, RETURN_ERROR])
def test_every_overrun_policy_is_accepted_positionally_and_by_keyword(policy):
    assert isinstance(policy, OverrunPolicy)
    with EventStore(Dispatcher(), 8, policy):
        pass
    with EventStore(Dispatcher(), 8, policy=policy):
        pass


@pytest.mark.parametrize("dispatcher", [None, {}, object(), "dispatcher"])
def test_dispatcher_that_is_not_a_dispatcher_is_type_error(dispatcher):
    with pytest.raises(TypeError):
        EventStore(dispatcher, 8)


def test_policy_constants_are_the_enum_members():
    assert DROP_OLDEST is OverrunPolicy.DROP_OLDEST
    assert BLOCK is OverrunPolicy.BLOCK
    assert RETURN_ERROR is OverrunPolicy.RETURN_ERROR


def test_check_pickle_false_accepts_in_process_events_that_could_not_travel():
    import threading

    seen = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ev.data))
    lock = threading.Lock()
    with EventStore(d, 8) as store:
        with pytest.raises(TypeError, match="cannot be pickled"):
            store.subscribe(Event("p", lock))
        assert store.metrics() == (0, 0, 0)  # the refused event left no trace
    with EventStore(d, 8, check_pickle=False) as store:
        store.subscribe(Event("p", lock))
        assert store.publish() == 1
    assert seen == [lock]  # the very object, in process


def test_check_pickle_false_with_workers_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="workers=0"):
        EventStore(Dispatcher(), 8, workers=1, check_pickle=False)


def test_a_projection_is_checked_every_time_it_is_a_new_object():
    d = Dispatcher()
    with EventStore(d, 8) as store:
        store.subscribe(Event("p"))
        for _ in range(2):
            with pytest.raises(TypeError, match="unhashable"):
                store.subscribe(Event(["p"]))
            with pytest.raises(TypeError, match="compared by identity"):
                store.subscribe(Event(object()))
        assert store.metrics() == (1, 0, 0)
