"""Specification of a sync-mode store used from several threads at once."""

from __future__ import annotations

import threading
from collections import Counter

from busmp import Dispatcher, Event, EventStore
from support import counting_dispatcher, run_threads


def test_50_producers_racing_20_subscribes_each_then_one_publish_gives_1000_handler_calls():
    counter, lock = Counter(), threading.Lock()
    with EventStore(counting_dispatcher(counter, lock), 1 << 16) as store:
        start = threading.Barrier(50)
        errors = []

        def producer(base):
            def run():
                try:
                    start.wait()
                    for i in range(20):
                        store.subscribe(Event("p", id=f"{base}-{i}"))
                except BaseException as exc:
                    errors.append(exc)

            return run

        run_threads([producer(b) for b in range(50)])
        assert errors == []
        assert store.publish() == 1000
        assert sum(counter.values()) == 1000
        assert len(counter) == 1000
        assert store.metrics() == (1000, 1000, 0)


def test_1000_concurrent_producer_threads_then_one_publish_gives_1000_handler_calls():
    counter, lock = Counter(), threading.Lock()
    with EventStore(counting_dispatcher(counter, lock), 1 << 16) as store:
        start = threading.Barrier(1000, timeout=30)

        def producer(i):
            def run():
                start.wait()
                store.subscribe(Event("p", id=str(i)))

            return run

        run_threads([producer(i) for i in range(1000)])
        assert store.metrics().published == 1000
        assert store.publish() == 1000
        assert sorted(counter) == sorted(str(i) for i in range(1000))
        assert set(counter.values()) == {1}


def test_concurrent_publishes_never_dispatch_an_event_twice():
    counter, lock = Counter(), threading.Lock()
    total = 5000
    with EventStore(counting_dispatcher(counter, lock), 1 << 13) as store:
        for i in range(total):
            store.subscribe(Event("p", id=str(i)))
        taken = []
        start = threading.Barrier(8)

        def publisher():
            start.wait()
            n = 0
            for _ in range(50):
                n += store.publish()
            with lock:
                taken.append(n)

        run_threads([publisher] * 8)
        taken_total = sum(taken) + store.publish()
        assert taken_total == total
        assert len(counter) == total
        assert max(counter.values()) == 1


def test_concurrent_subscribes_and_publishes_lose_and_duplicate_nothing():
    counter, lock = Counter(), threading.Lock()
    producers, per_producer = 4, 500
    with EventStore(counting_dispatcher(counter, lock), 1 << 12) as store:
        done = threading.Event()

        def producer(p):
            def run():
                for i in range(per_producer):
                    store.subscribe(Event("p", id=f"{p}-{i}"))

            return run

        def publisher():
            while not done.is_set():
                store.publish()

        pub_threads = [threading.Thread(target=publisher, daemon=True) for _ in range(3)]
        for t in pub_threads:
            t.start()
        try:
            run_threads([producer(p) for p in range(producers)])
        finally:
            done.set()
            for t in pub_threads:
                t.join(30)
        assert not any(t.is_alive() for t in pub_threads)
        store.publish()
        assert len(counter) == producers * per_producer
        assert max(counter.values()) == 1
        assert store.metrics() == (2000, 2000, 0)


def test_reentrant_publish_from_a_handler_does_not_redispatch_in_flight_events():
    counter, lock = Counter(), threading.Lock()
    d = Dispatcher()
    with EventStore(d, 64) as store:

        def handler(ctx, ev):
            with lock:
                counter[ev.id] += 1
            store.publish()

        d.register("p", handler)
        for i in range(10):
            store.subscribe(Event("p", id=str(i)))

        def outer():
            store.publish()

        run_threads([outer], limit=10)
        store.publish()
        assert sorted(counter) == sorted(str(i) for i in range(10))
        assert set(counter.values()) == {1}
        assert store.metrics() == (10, 10, 0)
        # the read cursor did not move backwards: a new event is handled once, old ones not again
        store.subscribe(Event("p", id="new"))
        assert store.publish() == 1
        assert counter["new"] == 1 and sum(counter.values()) == 11


def test_handler_that_subscribes_and_publishes_gets_the_new_event_handled_once():
    counter, lock = Counter(), threading.Lock()
    d = Dispatcher()
    with EventStore(d, 64) as store:

        def parent(ctx, ev):
            with lock:
                counter[ev.id] += 1
            store.subscribe(Event("child", id=f"child-of-{ev.id}"))
            store.publish()

        def child(ctx, ev):
            with lock:
                counter[ev.id] += 1

        d.register("parent", parent)
        d.register("child", child)
        for i in range(5):
            store.subscribe(Event("parent", id=str(i)))

        run_threads([store.publish], limit=10)
        store.publish()
        store.flush()
        assert len(counter) == 10
        assert set(counter.values()) == {1}
        assert store.metrics() == (10, 10, 0)
