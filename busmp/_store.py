"""The :class:`EventStore`: subscribe into the slot ring, publish to an executor, account.

State that threads share (free/pending slots, counters, in-flight work) changes only under
``self._lock``. Handlers never run under it: ``publish()`` claims slots under the lock and
lets the executor run them outside, which is what makes ``publish()`` re-entrant (a handler
may publish) and thread-safe (each pending slot is claimed by exactly one caller).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from ._transport import shm as _shm
from ._outcomes import Accounting, AfterHook, BeforeHook, ErrorHook, inside_hook
from ._transport.codec import UNDECODABLE, decode_events
from ._dispatch import BatchHandler, BatchRoute, Dispatcher, Middleware, Routes, check_projection, handler_name
from ._transport.packing import CHUNK_MAX, Encoded, check_one, encode_many, encode_one
from ._dlq import DeadLetterQueue
from ._errors import BufferFull, StoreClosed
from ._event import BACKGROUND, Context, Event, current_emitter
from ._workers.executor import Executor, InlineExecutor
from ._metrics import Metrics, Stats
from ._pipeline import Item, Run, Ticket
from ._policy import OverrunPolicy
from ._transport.ring import DEFAULT_SLOT_SIZE, SlotRing
from ._schedule import Scheduler, Timer, to_seconds, to_timestamp
from ._transaction import Transaction

__all__ = ["EventStore"]

NOT_DISPATCHED = "busmp.EventStore.drain"
HELP_SECONDS = 0.002  # how long flush() reads the workers' results itself before it sleeps

#: A slot's events as objects (sync mode): the events, their context, earlier attempts.
Held = tuple[list[Event], Context | None, int]
#: What a sync-mode slot keeps: a Held, or for the usual single event with no context and
#: no earlier attempts the event alone (two objects fewer per pending event for the GC to walk).
Kept = Held | Event
#: The encoding of one event whose sync-mode slot keeps the object: nothing is written.
_KEPT_ONE: Encoded = (b"", 0, 0, [], 1)


class EventStore:
    """An event bus over a shared-memory slot ring; see the package docstring for the data flow.

    Options beyond the contract (keyword only):

    * ``slot_size``: bytes per ring slot (default 512). A larger event takes a page of the
      ring's arena (8 KiB), a larger one still a shared-memory block of its own (see
      ``busmp._ring``).
    * ``start_method``: ``"forkserver"``, ``"spawn"`` or ``"fork"`` for worker processes.
    """

    def __init__(self, dispatcher: Dispatcher, buffer_size: int = 1 << 16,
                 policy: OverrunPolicy = OverrunPolicy.DROP_OLDEST, *, workers: int = 0,
                 dlq: DeadLetterQueue | None = None, slot_size: int = DEFAULT_SLOT_SIZE,
                 start_method: str | None = None) -> None:
        _validate(dispatcher, buffer_size, policy, workers, dlq)
        _validate_start_method(start_method)
        self.dlq = dlq
        self._dispatcher = dispatcher
        self._policy = policy
        prefix = _shm.new_prefix()
        self._ring = SlotRing.create(buffer_size, slot_size, name=f"{prefix}_ring")
        self._lock = threading.RLock()
        self._room = threading.Condition(self._lock)   # slots were freed
        self._idle = threading.Condition(self._lock)   # in-flight work reached zero
        self.accounting = Accounting(lambda: self.dlq)
        self._published = 0
        self._in_flight = 0
        self._closing = False
        self._closed = False
        self._batches: dict[Hashable, tuple[BatchRoute, ...]] = {}
        self._middleware: tuple[Middleware, ...] = ()
        self._config_version = 0
        self._routes: tuple[tuple[int, int], Routes] | None = None
        self._last_read: tuple[tuple[int, int | None], tuple[list[Event], Context, int]] | None = None
        self._keeps_objects = workers == 0
        self._scheduler = Scheduler(self._fire_timer, name=f"busmp-scheduler-{prefix}")
        try:
            self._executor: Executor = self._make_executor(workers, start_method, prefix)
        except BaseException:
            self._ring.close()
            raise
        # A store dropped without drain() still stops its workers and unlinks its memory.
        self._finalizer = weakref.finalize(self, _abandon, self._executor, self._ring)

    def _make_executor(self, workers: int, start_method: str | None, prefix: str) -> Executor:
        # Executors see the store through a proxy: the finalizer below holds the executor, and
        # a strong reference back would keep the store alive for ever.
        host = weakref.proxy(self)
        if workers == 0:
            return InlineExecutor(host)
        from ._workers.pool import ProcessExecutor

        return ProcessExecutor(host, self._ring, workers, start_method, prefix)

    # -- configuration ------------------------------------------------------------
    def register_batch(self, projection: Hashable, size: int, handler: BatchHandler) -> None:
        """Deliver the events of one publish for ``projection`` in chunks of at most ``size``."""
        check_projection(projection)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"batch size must be an int >= 1, got {size!r}")
        if not callable(handler):
            raise TypeError(f"batch handler must be callable, got {type(handler).__name__}")
        with self._lock:
            route = BatchRoute(size, handler, handler_name(handler))
            self._batches[projection] = self._batches.get(projection, ()) + (route,)
            self._config_version += 1

    def use(self, middleware: Middleware) -> None:
        """Append middleware; the first registered is the outermost."""
        if not callable(middleware):
            raise TypeError(f"middleware must be callable, got {type(middleware).__name__}")
        with self._lock:
            self._middleware += (middleware,)
            self._config_version += 1

    def on_before(self, hook: BeforeHook) -> None:
        """Call ``hook(ctx, event)`` before each (event, handler); in this process."""
        self.accounting.before_hooks.append(_callable(hook, "on_before hook"))

    def on_after(self, hook: AfterHook) -> None:
        """Call ``hook(ctx, event, result, error)`` after each (event, handler); in this process."""
        self.accounting.after_hooks.append(_callable(hook, "on_after hook"))

    def on_error(self, hook: ErrorHook) -> None:
        """Call ``hook(ctx, event, error)`` for each failed (event, handler); in this process."""
        self.accounting.error_hooks.append(_callable(hook, "on_error hook"))

    def routes_and_key(self) -> tuple[Routes, object]:
        """The routing snapshot and a key that changes whenever workers need a new copy."""
        return self.routes(), (self._dispatcher.version, self._config_version, self.accounting.wants_results)

    def routes(self) -> Routes:
        """The routing snapshot for the next dispatch, rebuilt only when something changed."""
        version = (self._dispatcher.version, self._config_version)
        cached = self._routes
        if cached is not None and cached[0] == version:
            return cached[1]
        with self._lock:
            routes = Routes(self._dispatcher.snapshot(), dict(self._batches), self._middleware)
            self._routes = (version, routes)
            return routes

    # -- producing ----------------------------------------------------------------
    def subscribe(self, event: Event, ctx: Context | None = None, *, timeout: float | None = None) -> None:
        """Enqueue ``event``; when the ring is full, the store's policy decides."""
        self._check_open()
        if self._keeps_objects:
            check_one(event, ctx)  # the pickle is the check; the slot keeps the object
            with self._lock:
                self._check_open()
                self._enqueue(_KEPT_ONE, ctx, timeout, _keep(event, ctx, 0))
            return
        encoded = encode_one(event, ctx)
        with self._lock:
            self._check_open()
            self._enqueue(encoded, ctx, timeout, _keep(event, ctx, 0))


    def subscribe_many(self, events: Iterable[Event], ctx: Context | None = None, *,
                       timeout: float | None = None) -> int:
        """Enqueue many events; returns how many were accepted.

        Every event is checked before any is enqueued, so a bad one rejects the whole call.
        Consecutive events of one projection share a slot and a pickle (a *chunk*), which is
        what makes this much cheaper per event than ``subscribe``. Under ``RETURN_ERROR`` and
        ``BLOCK`` the events that fit are accepted and counted; ``BufferFull``/``TimeoutError``
        is raised only when not even the first one fits.
        """
        self._check_open()
        chunks = encode_many(list(events), ctx, self._ring.chunk_capacity, self._ring.slot_count)
        accepted = 0
        with self._lock:
            self._check_open()
            for chunk, members in chunks:
                for piece, held in self._pieces(chunk, members, ctx):
                    try:
                        self._enqueue(piece, ctx, timeout, (held, ctx, 0))
                    except (BufferFull, TimeoutError):
                        if accepted == 0:
                            raise
                        return accepted
                    accepted += piece[4]
        return accepted

    def _pieces(self, chunk: Encoded, members: list[Event], ctx: Context | None) -> list[tuple[Encoded, list[Event]]]:
        """How a chunk goes into the ring: whole, or (rarely) cut smaller. Under the lock.

        Cut to single events when the ring cannot take it whole and the policy would refuse
        or wait (so that as many events as fit are accepted); cut to slot size when every
        arena page is taken (a spill block per chunk would cost more than the cutting).
        """
        if self._ring.free_events < chunk[4] and self._policy is not OverrunPolicy.DROP_OLDEST:
            return [(encode_one(event, ctx), [event]) for event in members]
        if len(members) > 1 and not self._keeps_objects and self._ring.would_spill(chunk[0], chunk[3]):
            return encode_many(members, ctx, self._ring.capacity, self._ring.slot_count)
        return [(chunk, members)]

    def _resubscribe(self, event: Event, ctx: Context | None, attempts: int) -> None:
        """``subscribe`` for a dead letter's replay: its earlier attempts travel with it."""
        self._check_open()
        encoded = encode_one(event, ctx, attempts)
        with self._lock:
            self._check_open()
            self._enqueue(encoded, ctx, None, _keep(event, ctx, attempts))

    def _enqueue(self, encoded: Encoded, ctx: Context | None, timeout: float | None, held: Kept) -> None:
        """Make room (per policy), write one slot, append it to the pending list. Under the lock."""
        if not self._keeps_objects:
            self._ring.check_spill_room([(encoded[0], encoded[3])])
        self._reserve(encoded[4], ctx, timeout)
        slot = self._ring.take(encoded[4])
        self._write(slot, encoded, held)
        self._ring.pending.append(slot)
        self._published += encoded[4]

    def _write(self, slot: int, encoded: Encoded, held: Kept | None) -> None:
        """Fill a slot; its sequence number is that of its first event.

        Sync mode keeps the events themselves (``held``): the pickle only proved that they
        could travel, and handlers get the very objects that were subscribed, as with any
        in-process bus. Worker mode writes the pickle into shared memory for the workers.
        """
        payload, flags, route, buffers, events = encoded
        counts = self._ring.counts
        if self._keeps_objects and held is not None:
            self._ring.objects[slot] = held
        else:
            self._ring.write(slot, counts["written"] + 1, route, payload, flags, buffers)
        counts["written"] += events

    def _reserve(self, count: int, ctx: Context | None, timeout: float | None) -> None:
        """Make room for ``count`` events (all or none), applying the overrun policy. Under the lock."""
        ring = self._ring
        if ring.free_events >= count:
            return
        if count > ring.slot_count:
            raise BufferFull(f"{count} events cannot fit a ring of {ring.slot_count} slots; "
                             "raise buffer_size or commit smaller groups")
        deadline = _deadline(timeout, ctx)
        while ring.free_events < count:
            if self._policy is OverrunPolicy.DROP_OLDEST and ring.drop_oldest_pending():
                continue
            if self._policy is OverrunPolicy.RETURN_ERROR:
                raise BufferFull(
                    f"ring full: room for {ring.slot_count} events, {ring.free_events} free, {count} needed; "
                    "publish() to make room, or choose BLOCK or DROP_OLDEST")
            # BLOCK, or DROP_OLDEST when every slot is held by work already handed off.
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"ring stayed full ({ring.slot_count} slots) until the timeout")
            self._room.wait(remaining)
            self._check_open()

    # -- dispatching --------------------------------------------------------------
    def publish(self) -> int:
        """Hand every pending event to the handlers; returns how many were taken."""
        self._check_open()
        self._executor.check_routes(*self.routes_and_key())
        with self._lock:
            slots = self._ring.take_pending()
            if not slots:
                return 0
            events = self._ring.live_events(slots)
            self._hand_off(events)
        self._executor.submit(slots)
        return events

    def _hand_off(self, events: int) -> None:
        """Events leave the pending list for an executor: in flight, and past the published
        cursor. Under the lock."""
        self._in_flight += events
        self._ring.counts["published"] += events

    def _run_now(self, events: Sequence[Event], ctx: Context | None, *, raise_first: bool,
                 on_enqueued: Callable[[], None] | None = None, timeout: float | None = None) -> None:
        """Enqueue ``events`` all or nothing and handle exactly them, in order, before returning."""
        self._check_open()
        encoded = [encode_one(event, ctx) for event in events]
        if not encoded:
            return
        ticket = Ticket()
        with self._lock:
            self._check_open()
            if not self._keeps_objects:
                self._ring.check_spill_room([(item[0], item[3]) for item in encoded])
            self._reserve(len(encoded), ctx, timeout)
            slots = [self._ring.take(1) for _ in encoded]
            for slot, item, event in zip(slots, encoded, events):
                self._write(slot, item, _keep(event, ctx, 0))
            self._published += len(slots)
            self._hand_off(len(slots))
        if on_enqueued is not None:
            on_enqueued()
        self._executor.submit(slots, ticket)
        self._executor.wait(ticket, None)
        if raise_first and ticket.errors:
            raise ticket.errors[0]

    # -- executor host interface --------------------------------------------------
    def claim_runs(self, slots: Sequence[int], ticket: Ticket | None) -> tuple[int, list[Run]]:
        """Sync mode: take the events of claimed slots and give the slots back at once."""
        ring = self._ring
        with self._lock:
            runs: list[Run] = []
            singles: list[Event] = []  # consecutive lone events, run together
            for slot in slots:
                kept = ring.objects[slot]
                if type(kept) is not tuple:
                    singles.append(kept)
                    continue
                if singles:
                    runs.append((singles, BACKGROUND, 0, ticket))
                    singles = []
                held, ctx, attempts = kept
                first = ring.first[slot]
                if first or ring.live[slot] != len(held):  # the front of a chunk was dropped
                    held = held[first: first + ring.live[slot]]
                runs.append((held, ctx if ctx is not None else BACKGROUND, attempts, ticket))
            if singles:
                runs.append((singles, BACKGROUND, 0, ticket))
            events = ring.release(list(slots))
            ring.sync_header()
            self._room.notify_all()
        return events, runs

    def _read_slot(self, slot: int, seq: int | None = None) -> tuple[list[Event], Context, int]:
        """What a slot holds, decoded; an undecodable slot reads as placeholder events.

        Worker mode reads each reported-on slot once, however many of its events have
        outcomes, and no dead letter is made here: the outcome being settled is the record.
        """
        key = (slot, seq)
        if self._last_read is not None and self._last_read[0] == key and seq is not None:
            return self._last_read[1]
        payload: Any = b""
        try:
            payload, flags, buffers = self._ring.read(slot, seq)
            events, ctx, attempts = decode_events(payload, flags, buffers)
            decoded = (events, ctx if ctx is not None else BACKGROUND, attempts)
        except Exception:
            decoded = ([Event(UNDECODABLE, bytes(payload))] * CHUNK_MAX, BACKGROUND, 0)
        self._last_read = (key, decoded)
        return decoded

    def item_at(self, slot: int, seq: int, index: int, ticket: Ticket | None) -> Item:
        """Worker mode: event ``index`` of a slot a worker reported on, decoded again here for hooks and DLQ."""
        events, ctx, attempts = self._read_slot(slot, seq)
        return Item(events[index], ctx, attempts, ticket)

    def release(self, slots: list[int]) -> None:
        """Worker mode: these slots' events are fully handled; reuse the slots."""
        with self._lock:
            events = self._ring.release(slots)
            self._room.notify_all()
        self.finished(events)

    def place_followups(self, encoded: list[Encoded]) -> list[int]:
        """Worker mode: write as many emitted events as there are free slots; no policy applies."""
        placed: list[int] = []
        with self._lock:
            for item in encoded:
                if self._ring.free_events < 1:
                    break
                slot = self._ring.take(1)
                self._write(slot, item, None)
                placed.append(slot)
            self._ring.counts["published"] += len(placed)  # already counted in flight when emitted
        return placed

    def count_followup(self) -> None:
        with self._lock:
            self._published += 1
            self._in_flight += 1

    def accept_followup(self, event: Event, ctx: Context | None) -> None:
        """A handler's ``ctx.emit(event)``: counted as published and as work in flight."""
        encode_one(event, ctx)  # reject what could not travel to a worker, in every mode
        self.count_followup()

    def finished(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count
            if self._in_flight == 0:
                self._idle.notify_all()

    # -- waiting and closing ------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Wait until every published event, and every follow-up, has been handled."""
        if current_emitter.get() is not None or inside_hook():
            raise RuntimeError("flush() inside a handler or hook would wait for that very "
                               "handler or hook; call it from outside them")
        deadline = _deadline(timeout, None)
        help_for = HELP_SECONDS if deadline is None else min(HELP_SECONDS, deadline - time.monotonic())
        self._executor.help_collect(lambda: self._in_flight == 0, help_for)
        with self._lock:
            while self._in_flight > 0:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"flush(): {self._in_flight} events still in flight after {timeout} s")
                self._idle.wait(remaining)

    def drain(self, timeout: float | None = None) -> None:
        """Flush, stop the workers and release shared memory. Idempotent.

        Events subscribed but never published, and timers that never fired, become dead
        letters with :class:`StoreClosed`, so nothing vanishes unnoticed.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
        flush_error: TimeoutError | None = None
        try:
            self.flush(timeout)
        except TimeoutError as exc:
            flush_error = exc
        for timer in self._scheduler.stop():
            self._dead_on_close(timer.event, "timer never fired")
        with self._lock:
            ring = self._ring
            for slot in ring.take_pending():
                events = _unkeep(ring.objects[slot])[0] if self._keeps_objects else self._read_slot(slot)[0]
                for event in events[ring.first[slot]: ring.first[slot] + ring.live[slot]]:
                    self._dead_on_close(event, "never published")
            self._closed = True
            self._room.notify_all()
        self._executor.shutdown(timeout)
        self._finalizer()
        if flush_error is not None:
            raise flush_error

    close = drain

    def _dead_on_close(self, event: Event, why: str) -> None:
        self.accounting.dead_letter(event, StoreClosed(f"store drained; the event was {why}"), 1, NOT_DISPATCHED)

    def _check_open(self) -> None:
        if self._closing:
            raise StoreClosed("the store was drained; create a new EventStore to publish again")

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.drain()

    # -- scheduling ---------------------------------------------------------------
    def schedule(self, when: datetime | float, event: Event, ctx: Context | None = None) -> Timer | None:
        """Handle ``event`` at ``when``: now (returning ``None``) if that is not in the future."""
        at = to_timestamp(when)
        encode_one(event, ctx)  # bad input fails now, not in the timer thread
        if at <= time.time():
            self._run_now([event], ctx, raise_first=False)
            return None
        self._check_open()
        return self._scheduler.add(at, event, ctx)

    def schedule_after(self, delay: timedelta | float, event: Event, ctx: Context | None = None) -> Timer | None:
        seconds = to_seconds(delay)
        return self.schedule(time.time() + seconds if seconds > 0 else 0.0, event, ctx)

    def _fire_timer(self, timer: Timer) -> None:
        try:
            self._run_now([timer.event], timer.ctx, raise_first=False)
        except Exception as exc:  # the ring refused it (BufferFull, closed): keep it as a dead letter
            self.accounting.dead_letter(timer.event, exc, 1, "busmp.EventStore.schedule")

    # -- transactions -------------------------------------------------------------
    def begin_transaction(self) -> Transaction:
        self._check_open()
        return Transaction(self)

    # -- observing ----------------------------------------------------------------
    def metrics(self) -> Metrics:
        return Metrics(self._published, self.accounting.processed, self.accounting.errors)

    def stats(self) -> Stats:
        with self._lock:
            ring = self._ring
            return Stats(
                published=self._published, processed=self.accounting.processed,
                errors=self.accounting.errors, dropped=ring.counts["dropped"],
                pending=len(ring.pending), in_flight=self._in_flight,
                dead_letters=len(self.dlq) if self.dlq is not None else 0,
                free_slots=ring.free_events, slots=ring.slot_count,
                workers=self._executor.workers, per_worker=self._executor.per_worker(),
                free_pages=len(ring.free_pages), pages=ring.page_count,
            )

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"EventStore({self._ring.slot_count} slots, {self._policy.name}, "
                f"workers={self._executor.workers}, {state})")


def _keep(event: Event, ctx: Context | None, attempts: int) -> Kept:
    return event if ctx is None and attempts == 0 else ([event], ctx, attempts)


def _unkeep(kept: Kept) -> Held:
    return kept if isinstance(kept, tuple) else ([kept], None, 0)


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


def _abandon(executor: Executor, ring: SlotRing) -> None:
    """Release what a store holds, without touching the store (it may be gone already)."""
    executor.abandon()
    ring.close()


def _validate_start_method(start_method: object) -> None:
    methods = multiprocessing.get_all_start_methods()
    if start_method is not None and start_method not in methods:
        raise ValueError(f"start_method must be one of {methods} or None (the default), "
                         f"got {start_method!r}")


def _deadline(timeout: float | None, ctx: Context | None) -> float | None:
    """A ``time.monotonic()`` deadline from a timeout and a context's wall-clock deadline."""
    candidates = []
    if timeout is not None:
        candidates.append(time.monotonic() + timeout)
    remaining = ctx.remaining() if ctx is not None else None
    if remaining is not None:
        candidates.append(time.monotonic() + remaining)
    return min(candidates) if candidates else None


def _callable(fn: Any, what: str) -> Any:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    return fn
