"""The :class:`EventStore`: the contract's names over the bus (``_bus``) and an executor.

Every public method checks its arguments and hands over to the :class:`~busmp._bus.Bus`,
which owns the state threads share, or to the executor (``_workers``), which runs handlers.
Nothing here is state of its own beyond the two, the scheduler and the finalizer.
"""

from __future__ import annotations

import itertools
import logging
import asyncio
import multiprocessing
import os
import time
import weakref
from collections.abc import Hashable, Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from ._bus import DEFAULT_MAX_FOLLOWUPS, Bus, deadline_of
from ._dispatch import BatchHandler, BatchRoute, Dispatcher, Middleware, check_projection, handler_name
from ._dlq import DeadLetterQueue
from ._errors import StoreClosed
from ._event import Context, Event, Result, current_emitter
from ._metrics import Metrics, Stats
from ._outcomes import AfterHook, BeforeHook, ErrorHook, inside_hook
from ._policy import OverrunPolicy
from ._schedule import Scheduler, Timer, to_seconds, to_timestamp
from ._transaction import Transaction
from ._transport import shm as _shm
from ._transport import stats as _stats
from ._watch import StatsTicker
from ._transport.packing import encode_one
from ._transport.ring import DEFAULT_SLOT_SIZE
from ._workers.executor import Executor, InlineExecutor

__all__ = ["EventStore", "bus_of"]

EXIT_GRACE = 1.0     # seconds a with-block left by an exception gives events already in a worker
HELP_SECONDS = 0.002  # how long flush() reads the workers' results itself before it sleeps

log = logging.getLogger("busmp")
_store_numbers = itertools.count(1)


class EventStore:
    """An event bus over a shared-memory slot ring; see the package docstring for the data flow.

    ``EventStore(dispatcher, buffer_size=1 << 16, policy=DROP_OLDEST, *, workers=0, dlq=None,
    slot_size=512, start_method=None, name=None, check_pickle=True, backend="processes",
    ray_actor_options=None, handler_timeout=None, max_followups=65536)``

    * ``buffer_size``: how many events the ring holds (a power of two). When it is full the
      ``policy`` decides: ``DROP_OLDEST`` (the default, as in GoEventBus) discards the oldest
      event not yet published, ``BLOCK`` waits for room, ``RETURN_ERROR`` raises ``BufferFull``.
    * ``workers``: 0 runs handlers in the thread that calls ``publish()``; N > 0 runs them in
      N worker processes.
    * ``dlq``: a :class:`DeadLetterQueue` for failed (event, handler) pairs; settable later.
    * ``slot_size``: bytes per ring slot (default 512). A larger event takes a page of the
      ring's arena (8 KiB), a larger one still a shared-memory block of its own.
    * ``start_method``: ``"forkserver"`` (the Linux default), ``"spawn"`` or ``"fork"``.
    * ``name``: what other processes find the store by (``busmp.read_stats(name)``,
      ``python -m busmp stats NAME``): 1-24 characters of ``A-Z a-z 0-9 . _ -``, unique among
      this user's live stores (``ValueError`` otherwise). By default ``bus-<pid>-<n>``.
    * ``check_pickle``: sync mode only. By default ``subscribe`` pickles each event (and drops
      the pickle; a projection object once) to refuse, with a ``TypeError``, an event that
      could not travel to a worker, so that a program moves to ``workers=N`` unchanged.
      ``False`` skips that check for a purely in-process bus: events holding locks or open
      files are accepted, and an event that would fail only with workers is no longer found
      in sync mode. What it saves is the pickle of each payload, a visible part of a one-event
      ``subscribe`` for small events (see the benchmarks).
    * ``backend``: ``"processes"`` (the default) runs local worker processes fed from shared
      memory; ``"ray"`` runs the handlers in ``workers`` Ray actors, on the cluster this process
      is connected to (or a local one it starts), with ``ray_actor_options`` (a dict) passed to
      the actors' ``.options()``. Needs ``pip install 'busmp[ray]'``.
    * ``handler_timeout``: seconds (worker mode, either backend). A handler call (with its middleware
      chain; for a batch handler, one chunk) that runs longer is stopped by killing and
      replacing its worker: that (event, handler) becomes a dead letter with ``TimeoutError``,
      the calls of the same event after it in the fan-out become ``WorkerCrashed`` dead
      letters (they were cut off with it), and the events the worker had not started go to
      the other workers (they never ran: no re-run). A context deadline that passes first
      counts the same. The deadline is enforced by the collector thread, a tenth of the
      timeout late at most (10 ms to 1 s). An ``async def`` handler's awaiting is cancelled at
      the deadline instead (a ``TimeoutError`` dead letter; its worker lives on). In sync mode
      (``workers=0``) a running call cannot be stopped, so the option is refused there with
      ``ValueError``; a handler that must not hang the caller there checks ``ctx.expired``.
      With ``backend="ray"`` the actor is killed (``ray.kill``) and replaced the same way; the
      collector asks the actors that hold calls whether theirs is overdue (a tenth of the
      timeout apart, 20 ms to 1 s), and a call that never lets go of the GIL is not stopped.
    * ``max_followups``: how many follow-up events (``ctx.emit``) may be outstanding (emitted
      and not yet handled) at once. When they reach it, ``ctx.emit`` raises ``BufferFull``,
      and keeps refusing until every outstanding follow-up has been handled, so that a handler
      emitting more than one event per event (a storm) fails as any failing handler does, a
      dead letter unless it catches the error, and the storm dies down instead of growing
      memory without bound. Workers see the count the collector last wrote, so in worker mode
      the store may go a little past it (with the Ray backend, by what the calls in flight
      emit: an actor sees the room as it was when its call was sent).
    """

    def __init__(self, dispatcher: Dispatcher, buffer_size: int = 1 << 16,
                 policy: OverrunPolicy = OverrunPolicy.DROP_OLDEST, *, workers: int = 0,
                 dlq: DeadLetterQueue | None = None, slot_size: int = DEFAULT_SLOT_SIZE,
                 start_method: str | None = None, name: str | None = None, check_pickle: bool = True,
                 backend: str = "processes", ray_actor_options: dict[str, Any] | None = None,
                 handler_timeout: float | None = None, max_followups: int = DEFAULT_MAX_FOLLOWUPS) -> None:
        _validate(dispatcher, buffer_size, policy, workers, dlq)
        _validate_start_method(start_method)
        _validate_handler_timeout(handler_timeout, workers)
        if not check_pickle and workers:
            raise ValueError("check_pickle=False is for sync mode (workers=0) only: with workers every "
                             "event is pickled to travel; drop the option or use workers=0")
        _validate_backend(backend, workers, ray_actor_options)
        if backend == "ray":
            from ._ray.cluster import require_ray

            require_ray()  # ImportError naming the extra, before anything is made
        if not isinstance(max_followups, int) or isinstance(max_followups, bool) or max_followups < 1:
            raise ValueError(f"max_followups must be an int >= 1 (how many emitted follow-up events may be "
                             f"outstanding at once), got {max_followups!r}")
        name = _stats.check_name(name) if name is not None else f"bus-{os.getpid()}-{next(_store_numbers)}"
        _stats.sweep()  # blocks of this user's stores that were killed
        _shm.sweep_orphans()  # their rings, channels and spill blocks too
        prefix = _shm.new_prefix()
        from ._transport.ring import arena_pages

        block = _stats.StatsBlock(name, buffer_size, workers, arena_pages(buffer_size, slot_size))
        try:
            bus = Bus(dispatcher, buffer_size, policy, slot_size=slot_size, keeps_objects=workers == 0,
                      name=f"{prefix}_ring", store_name=name, stats=block, check_pickle=check_pickle,
                      max_followups=max_followups)
        except BaseException:
            block.close()
            raise
        bus.accounting.dlq = dlq
        try:
            bus.executor = _make_executor(bus, workers, start_method, prefix, backend, ray_actor_options,
                                          handler_timeout)
        except BaseException:
            bus.slots.close()
            block.close()
            raise
        self._bus = bus
        # Sync mode has a lean path for one event at a time (see Bus.subscribe_inline).
        self._subscribe = bus.subscribe_inline if workers == 0 else bus.subscribe
        self._publish = bus.publish_inline if workers == 0 else bus.publish
        self._scheduler = Scheduler(_timer_firer(bus), name=f"busmp-scheduler-{prefix}")
        self._ticker = StatsTicker(bus, block, name=f"busmp-stats-{prefix}", threaded=workers > 0)
        self._ticker.start()
        if workers == 0:
            bus.changed = self._ticker.tick  # no thread in sync mode: the bus ticks when due (see _watch)
        # A store dropped without drain() still stops its workers and unlinks its memory: the
        # finalizer holds what must be released, none of which refers back to the store.
        self._finalizer = weakref.finalize(self, _abandon, bus, self._scheduler, self._ticker)

    @property
    def name(self) -> str:
        """The store's name, as ``busmp.read_stats`` and ``python -m busmp`` know it."""
        return self._bus.name

    # -- configuration ------------------------------------------------------------
    @property
    def dlq(self) -> DeadLetterQueue | None:
        """The dead-letter queue that failed (event, handler) pairs go to; settable at any time."""
        return self._bus.accounting.dlq

    @dlq.setter
    def dlq(self, queue: DeadLetterQueue | None) -> None:
        if queue is not None and not isinstance(queue, DeadLetterQueue):
            raise TypeError(f"dlq must be a DeadLetterQueue or None, got {type(queue).__name__}")
        self._bus.accounting.dlq = queue

    def register_batch(self, projection: Hashable, size: int, handler: BatchHandler) -> None:
        """Deliver the events of one publish for ``projection`` in chunks of at most ``size``."""
        check_projection(projection)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"batch size must be an int >= 1, got {size!r}")
        if not callable(handler):
            raise TypeError(f"batch handler must be callable, got {type(handler).__name__}")
        self._bus.add_batch(projection, BatchRoute(size, handler, handler_name(handler)))

    def use(self, middleware: Middleware) -> None:
        """Append middleware; the first registered is the outermost."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {type(middleware).__name__}")
        self._bus.add_middleware(middleware)

    def on_before(self, hook: BeforeHook) -> None:
        """Call ``hook(ctx, event)`` before each (event, handler); in this process."""
        accounting = self._bus.accounting
        accounting.add_hook(accounting.before_hooks, _callable(hook, "on_before hook"))

    def on_after(self, hook: AfterHook) -> None:
        """Call ``hook(ctx, event, result, error)`` after each (event, handler); in this process."""
        accounting = self._bus.accounting
        accounting.add_hook(accounting.after_hooks, _callable(hook, "on_after hook"))

    def on_error(self, hook: ErrorHook) -> None:
        """Call ``hook(ctx, event, error)`` for each failed (event, handler); in this process."""
        accounting = self._bus.accounting
        accounting.add_hook(accounting.error_hooks, _callable(hook, "on_error hook"))

    # -- producing ----------------------------------------------------------------
    def subscribe(self, event: Event, ctx: Context | None = None, *, timeout: float | None = None) -> None:
        """Enqueue ``event``; when the ring is full, the store's policy decides.

        Raises ``BufferFull`` (RETURN_ERROR), ``TimeoutError`` (BLOCK past ``timeout`` or the
        context's deadline), ``StoreClosed`` after drain, ``TypeError`` for an event that
        could not travel to a worker. A refused event leaves the store unchanged.

        Under BLOCK only ``publish()`` makes room. When the ring is full of events that were
        never published and nothing is in flight, no room can come unless another thread
        publishes: after a second without a ``publish()`` the wait ends with ``BufferFull``
        (publish before subscribing more, or publish from another thread).
        """
        self._subscribe(event, ctx, timeout)

    def subscribe_many(self, events: Iterable[Event], ctx: Context | None = None, *,
                       timeout: float | None = None) -> int:
        """Enqueue many events; returns how many were accepted.

        Every event is checked before any is enqueued, so a bad one rejects the whole call.
        Consecutive events of one projection share a slot and a pickle (a *chunk*), which is
        what makes this much cheaper per event than ``subscribe``. Under ``RETURN_ERROR`` and
        ``BLOCK`` the events that fit are accepted and counted; ``BufferFull``/``TimeoutError``
        is raised only when not even the first one fits. Under ``DROP_OLDEST`` every event is
        accepted, and older pending ones may be dropped to make room (see ``stats().dropped``).
        """
        return self._bus.subscribe_many(events, ctx, timeout)

    def submit(self, event: Event, ctx: Context | None = None, *,
               timeout: float | None = None) -> Future[list[Result]]:
        """Subscribe ``event`` and ``publish()``; a future of its handlers' results.

        The future is running from the start (``cancel()`` returns False) and completes when
        every handler of the event has finished (not its follow-ups): with the list of
        ``Result``s, per-event handlers in registration order, then batch handlers' results
        for this event in registration order (``[]`` when nothing is registered); or with the
        first failing handler's error in that order (the dead letters still go to the DLQ).
        A submitted event dropped by ``DROP_OLDEST`` completes with ``BufferFull``; one cut off
        by ``drain()`` or a worker's death completes with that dead letter's error.

        Raises what ``subscribe`` raises (``BufferFull``, ``TimeoutError``, ``TypeError``,
        ``StoreClosed``), and ``TypeError`` for handlers that cannot be pickled for the
        workers; the event is then not taken. Other events are not slowed: only a submitted
        event's outcomes travel back from a worker.
        """
        return self._bus.submit(event, ctx, timeout)

    # -- dispatching --------------------------------------------------------------
    def publish(self) -> int:
        """Hand every pending event to the handlers; returns how many were taken.

        Sync mode returns when every handler (and every follow-up) is done; worker mode
        returns once the work is handed off (``flush()`` waits for it).
        """
        return self._publish()

    # -- waiting and closing ------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every published event, and every follow-up, has been handled."""
        if current_emitter.get() is not None or inside_hook():
            raise RuntimeError("flush() inside a handler or hook would wait for that very "
                               "handler or hook; call it from outside them")
        bus = self._bus
        deadline = deadline_of(timeout, None)
        help_for = HELP_SECONDS if deadline is None else min(HELP_SECONDS, deadline - time.monotonic())
        bus.executor.help_collect(lambda: bus.in_flight == 0, help_for)
        bus.wait_idle(deadline, timeout)

    def drain(self, timeout: float | None = None) -> None:
        """Flush, stop the workers and release shared memory. Idempotent.

        Events subscribed but never published, and timers that never fired, become dead
        letters with :class:`StoreClosed`, so nothing vanishes unnoticed. Past ``timeout``
        the workers are stopped anyway and ``TimeoutError`` is raised.
        """
        self._close(timeout, flush=True)

    def _close(self, timeout: float | None, flush: bool) -> None:
        """drain() (``flush``), or the prompt close of a ``with`` block left by an exception:
        nothing is waited for but the events already in a worker, for at most ``timeout``."""
        bus = self._bus
        if not bus.start_closing():
            return
        deadline = deadline_of(timeout, None)
        flush_error: TimeoutError | None = None
        try:
            if flush:
                self.flush(timeout)
        except TimeoutError as exc:
            flush_error = exc
        finally:
            self._shut(deadline)
        if flush_error is not None:
            raise flush_error

    def _shut(self, deadline: float | None) -> None:
        """What closing does once the flush is over (or given up): dead letters for timers and
        pending events, the workers stopped, every future completed, memory released."""
        bus = self._bus
        for timer in self._scheduler.stop():
            bus.dead_on_close(timer.event, "timer never fired")
        bus.close_pending()
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        bus.executor.shutdown(remaining)
        bus.end_submissions(StoreClosed("the store was drained before the event was handled"))
        self._ticker.tick()  # the last counts, for a reader that looks before the block goes
        self._finalizer()

    def close(self, timeout: float | None = None) -> None:
        """The same as :meth:`drain`."""
        self.drain(timeout)

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """``drain()`` on a clean exit. On an exception (Ctrl-C included) close promptly: events
        not yet handed to a worker become ``StoreClosed`` dead letters, events in a worker get
        at most ``EXIT_GRACE`` seconds, and the exception propagates."""
        if exc_type is None:
            self.drain()
        else:
            self._close(EXIT_GRACE, flush=False)

    # -- asyncio ------------------------------------------------------------------
    async def asubscribe(self, event: Event, ctx: Context | None = None, *, timeout: float | None = None) -> None:
        """``subscribe`` for a coroutine: under BLOCK it awaits room without blocking the
        event loop (the thread that frees a slot wakes it); same errors as ``subscribe``."""
        await self._bus.asubscribe(event, ctx, timeout)

    async def asubmit(self, event: Event, ctx: Context | None = None) -> list[Result]:
        """``submit`` awaited: the event's ``Result``s, or the first failing handler's error.

        Room is awaited as in ``asubscribe``; the worker's outcome arrives through
        ``asyncio.wrap_future`` (a ``call_soon_threadsafe`` from the collector thread), so no
        thread waits for it. In sync mode the handlers run as in ``apublish()``.
        """
        future = await self._bus.asubmit(event, ctx)
        return await asyncio.wrap_future(future)

    async def apublish(self) -> int:
        """``publish()`` for a coroutine. In sync mode, ``async def`` handlers are awaited in
        this loop, those of different events concurrently; worker mode hands off as ever."""
        return await self._bus.apublish()

    async def aflush(self, timeout: float | None = None) -> None:
        """``flush()`` for a coroutine: awaits a wake-up that the thread finishing the last
        event in flight sends to this loop; ``TimeoutError`` past ``timeout``."""
        if current_emitter.get() is not None or inside_hook():
            raise RuntimeError("aflush() inside a handler or hook would wait for that very "
                               "handler or hook; call it from outside them")
        await self._bus.await_idle(deadline_of(timeout, None), timeout)

    async def adrain(self, timeout: float | None = None) -> None:
        """``drain()`` for a coroutine: the flush is awaited; stopping the (idle) workers then
        takes the loop's thread briefly, as it joins their processes."""
        bus = self._bus
        if not bus.start_closing():
            return
        deadline = deadline_of(timeout, None)
        flush_error: TimeoutError | None = None
        try:
            await self.aflush(timeout)
        except TimeoutError as exc:
            flush_error = exc
        finally:
            self._shut(deadline)
        if flush_error is not None:
            raise flush_error

    async def __aenter__(self) -> EventStore:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        """``adrain()`` on a clean exit; on an exception the prompt close of ``__exit__``."""
        if exc_type is None:
            await self.adrain()
        else:
            self._close(EXIT_GRACE, flush=False)

    # -- scheduling ---------------------------------------------------------------
    def schedule(self, when: datetime | float, event: Event, ctx: Context | None = None) -> Timer | None:
        """Handle ``event`` at ``when`` (a datetime or ``time.time()`` seconds): now, before
        returning ``None``, if that is not in the future; else returns a :class:`Timer`."""
        at = to_timestamp(when)
        encode_one(event, ctx)  # bad input fails now, not in the timer thread
        if at <= time.time():
            self._bus.run_now([event], ctx, raise_first=False)
            return None
        self._bus.check_open()
        return self._scheduler.add(at, event, ctx)

    def schedule_after(self, delay: timedelta | float, event: Event, ctx: Context | None = None) -> Timer | None:
        """:meth:`schedule` ``delay`` seconds (or a ``timedelta``) from now."""
        seconds = to_seconds(delay)
        return self.schedule(time.time() + seconds if seconds > 0 else 0.0, event, ctx)

    # -- transactions -------------------------------------------------------------
    def begin_transaction(self) -> Transaction:
        """A :class:`Transaction`: events buffered locally, then committed all or nothing and
        handled in order, one at a time."""
        self._bus.check_open()
        return Transaction(self._bus)

    # -- observing ----------------------------------------------------------------
    def metrics(self) -> Metrics:
        """``Metrics(published, processed, errors)``, exact at the moment of the call.

        * ``published``: +1 per accepted subscribe (an event later dropped by ``DROP_OLDEST``
          stays counted; a refused one is not) and per follow-up a handler emits;
        * ``processed``: +1 per completed (event, handler) call, successful or failed; a batch
          chunk adds its length;
        * ``errors``: +1 per failed (event, handler) call; a failed batch chunk adds its length.

        In worker mode an outcome counts once the parent has read it from the worker.
        """
        return self._bus.metrics()

    def stats(self) -> Stats:
        """A :class:`~busmp.Stats` snapshot, exact at the moment of the call and counted in
        events (see ``Stats`` for every field): the metrics, ``pending``, ``in_flight``,
        ``dropped``, ``dead_letters`` (a running total), ``unhandled``, ring room, and per
        worker its handled count, pid and state, plus rates over the last second. Other
        processes read the same fields with ``busmp.read_stats(store.name)``."""
        return self._bus.stats(self._ticker.rates)

    def __repr__(self) -> str:
        bus = self._bus
        state = "closed" if bus.closed else "open"
        return (f"EventStore({bus.name!r}, {bus.slots.slot_count} slots, {bus.policy.name}, "
                f"workers={bus.executor.workers}, {state})")


def bus_of(store: EventStore) -> Bus:
    """The seam behind a store, for the store's companions (DLQ replay)."""
    if not isinstance(store, EventStore):
        raise TypeError(f"expected an EventStore, got {type(store).__name__}")
    return store._bus


def _make_executor(bus: Bus, workers: int, start_method: str | None, prefix: str, backend: str,
                   ray_actor_options: dict[str, Any] | None, handler_timeout: float | None) -> Executor:
    if workers == 0:
        return InlineExecutor(bus)
    if backend == "ray":
        from ._ray.cluster import check_actor_options
        from ._ray.executor import RayExecutor

        return RayExecutor(bus, workers, check_actor_options(ray_actor_options), prefix, handler_timeout)
    from ._workers.pool import ProcessExecutor

    return ProcessExecutor(bus, workers, start_method, prefix, handler_timeout)


def _timer_firer(bus: Bus) -> Any:
    def fire(timer: Timer) -> None:
        try:
            bus.run_now([timer.event], timer.ctx, raise_first=False)
        except Exception as exc:  # the ring refused it (BufferFull, closed): keep it as a dead letter
            bus.accounting.dead_letter(timer.event, exc, 1, "busmp.EventStore.schedule")

    return fire


def _abandon(bus: Bus, scheduler: Scheduler, ticker: StatsTicker) -> None:
    """Release what a store holds, without touching the store (it may be gone already).

    Also the end of ``drain()``; when the store was not drained (garbage-collected, or still
    open at interpreter exit) whatever was pending or in flight is lost, which deserves a line.
    """
    if not bus.closed:
        log.warning("busmp store %r was dropped without drain(): %d pending and %d in-flight events "
                    "are lost, and no dead letters were made for them; call store.drain() or use "
                    "`with EventStore(...) as store:`", bus.name, bus.slots.pending_events, bus.in_flight)
    ticker.stop()
    scheduler.stop()
    bus.executor.abandon()
    bus.end_submissions(StoreClosed("the store was garbage-collected without drain(); drain() it (or use "
                                    "`with EventStore(...)`) so that its events finish"))
    bus.slots.close()
    bus.stats_block.close()
    bus.executor.detach()


def _validate(dispatcher: object, buffer_size: object, policy: object, workers: object, dlq: object) -> None:
    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"EventStore needs a busmp.Dispatcher, got {type(dispatcher).__name__}")
    if not isinstance(buffer_size, int) or isinstance(buffer_size, bool) or buffer_size < 1 \
            or buffer_size & (buffer_size - 1):
        raise ValueError(f"buffer_size must be a power of two >= 1 (e.g. 1 << 16), got {buffer_size!r}")
    if not isinstance(policy, OverrunPolicy):
        raise ValueError(f"policy must be an OverrunPolicy (DROP_OLDEST, BLOCK, RETURN_ERROR), got {policy!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"workers must be an int >= 0 (0 runs handlers inline), got {workers!r}")
    if dlq is not None and not isinstance(dlq, DeadLetterQueue):
        raise TypeError(f"dlq must be a DeadLetterQueue or None, got {type(dlq).__name__}")


BACKENDS = ("processes", "ray")


def _validate_backend(backend: object, workers: int, ray_actor_options: object) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "ray" and workers == 0:
        raise ValueError("backend='ray' runs handlers in Ray actors: pass workers=N (N >= 1 actors); "
                         "workers=0 runs them in the calling thread, with no backend")
    if ray_actor_options is not None:
        if backend != "ray":
            raise ValueError("ray_actor_options applies to backend='ray' only")
        from ._ray.cluster import check_actor_options

        check_actor_options(ray_actor_options)


def _validate_start_method(start_method: object) -> None:
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(f"start_method must be one of {methods} or None (the default), "
                         f"got {start_method!r}")


def _validate_handler_timeout(handler_timeout: object, workers: int) -> None:
    if handler_timeout is None:
        return
    if not isinstance(handler_timeout, (int, float)) or isinstance(handler_timeout, bool) \
            or not handler_timeout > 0 or handler_timeout == float("inf"):
        raise ValueError(f"handler_timeout must be a number of seconds > 0 or None, got {handler_timeout!r}")
    if workers == 0:
        raise ValueError("handler_timeout needs worker processes: a handler running in the calling "
                         "thread (workers=0) cannot be stopped; pass workers=N (N >= 1), or drop "
                         "handler_timeout and let the handler check ctx.expired itself")


def _callable(fn: Any, what: str) -> Any:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    return fn
