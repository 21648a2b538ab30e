"""Specification of transactions (begin_transaction / publish / commit / rollback), sync mode."""

from __future__ import annotations

import pytest

from busmp import (
    RETURN_ERROR,
    BufferFull,
    Context,
    DeadLetterQueue,
    Dispatcher,
    Event,
    EventStore,
    Result,
    Transaction,
)


def collecting_dispatcher(seen, projection="p"):
    d = Dispatcher()
    d.register(projection, lambda ctx, ev: seen.append(ev.data))
    return d


def test_begin_transaction_returns_a_transaction():
    with EventStore(Dispatcher(), 8) as store:
        assert isinstance(store.begin_transaction(), Transaction)


def test_tx_publish_touches_neither_ring_nor_metrics():
    seen = []
    with EventStore(collecting_dispatcher(seen), 2, RETURN_ERROR) as store:
        tx = store.begin_transaction()
        for i in range(5):
            tx.publish(Event("p", f"tx-{i}"))
        assert store.metrics() == (0, 0, 0)
        # the ring of 2 still has both slots free
        store.subscribe(Event("p", "direct-0"))
        store.subscribe(Event("p", "direct-1"))
        assert store.publish() == 2
        assert seen == ["direct-0", "direct-1"]
        tx.rollback()


def test_commit_handles_exactly_its_events_in_order():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        tx = store.begin_transaction()
        for i in range(5):
            tx.publish(Event("p", i))
        assert seen == []
        tx.commit()
        assert seen == [0, 1, 2, 3, 4]
        assert store.metrics() == (5, 5, 0)
        assert store.publish() == 0
        assert seen == [0, 1, 2, 3, 4]


def test_commit_passes_its_context_to_the_handlers():
    seen = []
    d = Dispatcher()
    d.register("p", lambda ctx, ev: seen.append(ctx.value("tenant")))
    with EventStore(d, 8) as store:
        tx = store.begin_transaction()
        tx.publish(Event("p"))
        tx.commit(Context({"tenant": "acme"}))
    assert seen == ["acme"]


def test_commit_runs_the_full_pipeline_middleware_hooks_batches_and_dlq():
    log = []
    batches = []
    dlq = DeadLetterQueue()

    def middleware(handler):
        def wrapped(ctx, ev):
            log.append(("mw", ev.data))
            return handler(ctx, ev)

        return wrapped

    def broken(ctx, ev):
        raise LookupError("no stock")

    d = Dispatcher()
    d.register("p", lambda ctx, ev: log.append(("h", ev.data)))
    d.register("f", broken)
    with EventStore(d, 16, dlq=dlq) as store:
        store.use(middleware)
        store.register_batch("b", 10, lambda ctx, events: batches.append([e.data for e in events]))
        store.on_before(lambda ctx, ev: log.append(("before", ev.data)))
        store.on_after(lambda ctx, ev, res, exc: log.append(("after", ev.data)))
        tx = store.begin_transaction()
        tx.publish(Event("p", 1))
        tx.publish(Event("b", 2))
        tx.publish(Event("b", 3))
        tx.publish(Event("f", 4))
        with pytest.raises(LookupError):
            tx.commit()
        assert store.metrics() == (4, 4, 1)
    assert log.index(("before", 1)) < log.index(("h", 1)) < log.index(("after", 1))
    assert log.index(("mw", 1)) < log.index(("h", 1))
    assert ("mw", 4) in log
    assert batches == [[2, 3]]
    assert ("before", 2) in log and ("after", 3) in log
    assert [letter.event.data for letter in dlq.entries()] == [4]


def test_commit_never_handles_other_producers_pending_events():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        store.subscribe(Event("p", "other"))
        tx = store.begin_transaction()
        tx.publish(Event("p", "tx"))
        tx.commit()
        assert seen == ["tx"]
        assert store.publish() == 1
        assert seen == ["tx", "other"]
        assert store.publish() == 0
        assert seen == ["tx", "other"]


def test_commit_raises_the_first_handler_exception_but_handles_all_its_events():
    seen = []
    dlq = DeadLetterQueue()

    def picky(ctx, ev):
        seen.append(ev.data)
        if ev.data == 1:
            raise ValueError("first")
        if ev.data == 3:
            raise KeyError("second")
        return Result("ok")

    d = Dispatcher()
    d.register("p", picky)
    with EventStore(d, 8, dlq=dlq) as store:
        tx = store.begin_transaction()
        for i in range(5):
            tx.publish(Event("p", i))
        with pytest.raises(ValueError, match="first"):
            tx.commit()
        assert seen == [0, 1, 2, 3, 4]
        assert store.metrics() == (5, 5, 2)
    assert [letter.event.data for letter in dlq.entries()] == [1, 3]


def test_commit_is_all_or_nothing_under_return_error():
    seen = []
    with EventStore(collecting_dispatcher(seen), 4, RETURN_ERROR) as store:
        store.subscribe(Event("p", "pending-0"))
        store.subscribe(Event("p", "pending-1"))
        tx = store.begin_transaction()
        for i in range(3):
            tx.publish(Event("p", f"tx-{i}"))
        with pytest.raises(BufferFull):
            tx.commit()
        assert seen == []
        assert store.metrics() == (2, 0, 0)
        assert store.publish() == 2
        assert seen == ["pending-0", "pending-1"]
        assert store.publish() == 0


def test_commit_with_an_invalid_event_enqueues_none_of_the_transaction():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        store.subscribe(Event("p", "pending"))
        tx = store.begin_transaction()
        tx.publish(Event("p", "tx-0"))
        tx.publish(Event(["unhashable"], "tx-1"))
        with pytest.raises(TypeError):
            tx.commit()
        assert seen == []
        assert store.metrics() == (1, 0, 0)
        assert store.publish() == 1
        assert seen == ["pending"]


def test_commit_that_fits_exactly_under_return_error_succeeds():
    seen = []
    with EventStore(collecting_dispatcher(seen), 4, RETURN_ERROR) as store:
        store.subscribe(Event("p", "pending"))
        tx = store.begin_transaction()
        for i in range(3):
            tx.publish(Event("p", f"tx-{i}"))
        tx.commit()
        assert seen == ["tx-0", "tx-1", "tx-2"]
        store.publish()
        assert seen == ["tx-0", "tx-1", "tx-2", "pending"]


def test_rollback_discards_the_buffered_events():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        tx = store.begin_transaction()
        tx.publish(Event("p", 1))
        tx.publish(Event("p", 2))
        tx.rollback()
        assert store.publish() == 0
        assert seen == []
        assert store.metrics() == (0, 0, 0)


def test_rollback_keeps_other_producers_pending_events():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        store.subscribe(Event("p", "other"))
        tx = store.begin_transaction()
        tx.publish(Event("p", "tx"))
        tx.rollback()
        assert store.publish() == 1
    assert seen == ["other"]


def test_rollback_after_commit_does_not_corrupt_the_store():
    seen = []
    with EventStore(collecting_dispatcher(seen), 4, RETURN_ERROR) as store:
        for round_ in range(3):
            tx = store.begin_transaction()
            for i in range(4):
                tx.publish(Event("p", (round_, "tx", i)))
            tx.commit()
            tx.rollback()
            for i in range(4):  # the ring must have all 4 slots free again
                store.subscribe(Event("p", (round_, "direct", i)))
            assert store.publish() == 4
        assert len(seen) == 24
        assert store.metrics() == (24, 24, 0)


def test_rollback_after_a_failed_commit_does_not_corrupt_the_store():
    """The seed README's own pattern: ``if err := tx.Commit(); err != nil { tx.Rollback() }``."""
    seen = []

    def broken(ctx, ev):
        raise RuntimeError("handler failed")

    d = collecting_dispatcher(seen)
    d.register("f", broken)
    with EventStore(d, 2, RETURN_ERROR) as store:
        tx = store.begin_transaction()
        tx.publish(Event("f", "tx"))
        with pytest.raises(RuntimeError):
            tx.commit()
        tx.rollback()
        store.subscribe(Event("p", 0))
        store.subscribe(Event("p", 1))
        assert store.publish() == 2
    assert seen == [0, 1]


def test_with_block_commits_on_clean_exit():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        with store.begin_transaction() as tx:
            tx.publish(Event("p", 1))
            tx.publish(Event("p", 2))
            assert seen == []
        assert seen == [1, 2]


def test_with_block_rolls_back_on_exception_and_the_exception_propagates():
    seen = []
    with EventStore(collecting_dispatcher(seen), 8) as store:
        with pytest.raises(ZeroDivisionError):
            with store.begin_transaction() as tx:
                tx.publish(Event("p", 1))
                1 / 0
        assert store.publish() == 0
        assert store.metrics() == (0, 0, 0)
    assert seen == []
