"""Specification of ``busmp._lock.take``: how producing threads acquire busmp's locks.

``take`` must give the same exclusion as ``acquire()``: the caller holds the lock when it
returns, re-entrant locks stay re-entrant, a waiting thread gets the lock only after the
holder releases it, and a ``Condition`` over the lock still waits and wakes. (That it spares
several producers a lock convoy is a speed property: the streaming benchmark's
several-thread row measures it.)"""

from __future__ import annotations

import threading

import pytest

from busmp._lock import take

LOCKS = [threading.Lock, threading.RLock]


@pytest.mark.parametrize("make", LOCKS, ids=["Lock", "RLock"])
def test_take_returns_holding_a_free_lock(make):
    lock = make()
    take(lock)
    other = []
    t = threading.Thread(target=lambda: other.append(lock.acquire(False)))
    t.start()
    t.join()
    assert other == [False]  # another thread cannot have it


def test_take_is_reentrant_on_a_reentrant_lock():
    lock = threading.RLock()
    take(lock)
    take(lock)
    lock.release()
    other = []
    t = threading.Thread(target=lambda: other.append(lock.acquire(False)))
    t.start()
    t.join()
    assert other == [False]  # still held once
    lock.release()
    t = threading.Thread(target=lambda: other.append(lock.acquire(False) and (lock.release() or True)))
    t.start()
    t.join()
    assert other == [False, True]


@pytest.mark.parametrize("make", LOCKS, ids=["Lock", "RLock"])
def test_a_thread_in_take_gets_the_lock_only_after_the_holder_releases_it(make):
    lock, order = make(), []
    waiting = threading.Event()
    lock.acquire()

    def contender():
        waiting.set()
        take(lock)
        order.append("taken")
        lock.release()

    t = threading.Thread(target=contender)
    t.start()
    assert waiting.wait(5)
    for _ in range(50):  # the contender runs meanwhile and keeps trying
        threading.Event().wait(0.001)
    order.append("released")
    lock.release()
    t.join(5)
    assert order == ["released", "taken"]


def test_exclusion_holds_for_many_threads_taking_the_lock():
    lock, inside, overlaps, total = threading.RLock(), [0], [0], [0]

    def work():
        for _ in range(2000):
            take(lock)
            try:
                inside[0] += 1
                if inside[0] != 1:
                    overlaps[0] += 1
                total[0] += 1
                inside[0] -= 1
            finally:
                lock.release()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (overlaps[0], total[0]) == (0, 12_000)


def test_a_condition_over_the_lock_waits_and_wakes_a_thread_that_took_it():
    lock = threading.RLock()
    cond, ready, woke = threading.Condition(lock), threading.Event(), []

    def waiter():
        take(lock)
        try:
            ready.set()
            woke.append(cond.wait(5))  # releases the lock while it waits
        finally:
            lock.release()

    t = threading.Thread(target=waiter)
    t.start()
    assert ready.wait(5)
    take(lock)  # possible only because the waiter released it in wait()
    cond.notify()
    lock.release()
    t.join(5)
    assert woke == [True]
