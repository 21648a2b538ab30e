"""The seam: what an executor, a transaction or a DLQ replay sees of a store.

:class:`Bus` owns everything that threads of the parent share: the store lock, the slot
allocator (``_transport.slots``), the single path that writes slots, the pending list, the
published and in-flight counts, the routing configuration and the outcome accounting.
:class:`~busmp.EventStore` is the public face over it (arguments checked, the contract's
names); executors (``_workers``) implement :class:`~busmp._workers.executor.Executor` and
call back only the methods of :class:`~busmp._workers.executor.Host`, which a ``Bus`` is.

Locking. ``Bus.lock`` guards the allocator, the pending list and the counts. Handlers and hooks
never run under it: ``publish()`` claims slots under the lock and lets the executor run them
outside, which is what makes ``publish()`` re-entrant (a handler may publish) and thread-safe
(each pending slot is claimed by exactly one caller). Lock order, outermost first:
``ProcessExecutor`` state lock → ``Bus.lock`` → ``Accounting`` counter lock → a DLQ's lock.
Nothing holding a later lock ever takes an earlier one.

Submitted events (``submit``/``asubmit``). The bus keeps each one's
:class:`~busmp._pipeline.Submission` by slot from its write until its slot comes back: the
accounting records outcomes into it as they are settled (``Item.submission``), and the future
completes where the event leaves flight (``release``; the inline executor after its run) or is
discarded (DROP_OLDEST, ``close_pending``, ``end_submissions``). Futures are completed outside
the lock, since their callbacks run in the completing thread.

Sync mode, one event at a time. ``EventStore.subscribe``/``publish`` of a sync store call
:meth:`Bus.subscribe_inline` and :meth:`Bus.publish_inline`: the same contract in fewer steps
for the usual case (a plain event, no context; one pending event whose projection has plain
per-event handlers and no hook watches), each under one lock per step, with what cannot change
per call (the chains it may run alone, ``_lean``) made once per routing change. Everything
else falls through to :meth:`Bus.subscribe` and :meth:`Bus.publish`, the general path.

Coroutines never park a thread: ``asubscribe`` and ``aflush`` register a future of their loop,
and whoever notifies the room or idle condition wakes it with ``call_soon_threadsafe``.

The bus holds no reference to the store, so a store dropped without ``drain()`` is collected
and finalized even while its scheduler or collector thread runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pickle import dumps as _dumps
from time import monotonic as _monotonic
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, cast

from ._dispatch import BatchRoute, Dispatcher, Handler, Middleware, Routes, async_projections
from ._errors import BufferFull, StoreClosed
from ._future import SubmitFuture
from ._lock import take
from ._event import BACKGROUND, Context, Event, Result, current_emitter
from ._metrics import Metrics, Stats
from ._outcomes import Accounting, inside_hook
from ._pipeline import ChainRest, Continuation, Item, Run, Submission, Ticket, followup_run
from ._policy import OverrunPolicy
from ._transport.codec import (
    FLAG_REPORT, FLAG_RUN, PROTOCOL, RUN_ITEM, UNDECODABLE, decode_events, encode_event, encode_plain,
    encode_run,
)
from ._transport.packing import CHUNK_MAX, Encoded, check_event, check_pickles, encode_many, encode_one
from ._transport.ring import SlotRing
from ._transport.slots import Slots
from ._transport.stats import CLOSED, CLOSING, OPEN, STORE_STATES, WORKER_STATES, StatsBlock
from ._workers.executor import InlineExecutor

if TYPE_CHECKING:
    from ._dlq import DeadLetter
    from ._workers.executor import Executor

__all__ = ["Bus", "deadline_of", "NOT_DISPATCHED"]

NOT_DISPATCHED = "busmp.EventStore.drain"
DROP_LOG_SECONDS = 10.0  # after the first dropped event, one WARNING at most this often

log = logging.getLogger("busmp")
DEFAULT_MAX_FOLLOWUPS = 1 << 16
#: BLOCK waits at most this long for a publish() while the ring is full of pending events and
#: nothing is in flight: only a publish() could make room, and none is coming.
BLOCK_GRACE_SECONDS = 1.0

#: A slot's events as objects (sync mode): the events, their context, earlier attempts.
Held = tuple[list[Event], Context | None, int]
#: What a sync-mode slot keeps: a Held, or for the usual single event with no context and
#: no earlier attempts the event alone (two objects fewer per pending event for the GC to walk).
Kept = Held | Event
#: The encoding of one event whose sync-mode slot keeps the object: nothing is written.
_KEPT_ONE: Encoded = (b"", 0, 0, [], 1)
#: Each handler of a projection inside its middleware chain, with its name (``Routes.chains``).
Chain = tuple[tuple[Handler, str], ...]
_NOTHING = object()


class Bus:
    """The store's state and its one slot-writing path (see the module docstring)."""

    executor: Executor  # set by the store right after the bus is made

    def __init__(self, dispatcher: Dispatcher, buffer_size: int, policy: OverrunPolicy, *,
                 slot_size: int, keeps_objects: bool, name: str, store_name: str, stats: StatsBlock,
                 check_pickle: bool = True, max_followups: int = DEFAULT_MAX_FOLLOWUPS) -> None:
        self.slots = Slots(SlotRing.create(buffer_size, slot_size, name=name))
        self.ring = self.slots.ring
        self.name = store_name
        self.stats_block = stats  # the shared statistics (see _watch); workers write their lines
        self._drops_logged = 0
        self._drops_logged_at = 0.0
        # Called after each producer batch once ``tick_due`` (monotonic) has passed, outside the
        # lock, where no thread ticks the stats (sync mode; see _watch).
        self.changed: Callable[[], None] | None = None
        self.tick_due = 0.0
        self.policy = policy
        self.keeps_objects = keeps_objects
        self.lock = threading.RLock()
        self._room = threading.Condition(self.lock)   # slots were freed
        self._idle = threading.Condition(self.lock)   # in-flight work reached zero
        # Threads waiting on each condition: with none, nobody is notified (a one-event publish
        # frees a slot and empties the flight every time).
        self._room_sleepers = 0
        self._idle_sleepers = 0
        self._blocking = policy is OverrunPolicy.BLOCK  # only BLOCK's wait looks at _last_publish
        self.check_pickle = check_pickle
        self._checked: object = _NOTHING  # the last projection object that passed its check
        self._checked_route = 0  # and its route word (its hash)
        # Worker mode's open slot (see _gather): its events (None: none open), its slot and
        # sequence number, its route, the events' own pickles, the bytes of their run so far
        # and how many it may take.
        self._open: list[Event] | None = None
        self._open_slot = self._open_seq = self._open_route = self._open_bytes = self._open_limit = 0
        self._open_payloads: list[bytes] = []
        self.accounting = Accounting()
        self.published = 0
        self.in_flight = 0
        # Successful calls publish_inline counted under the bus lock, together with the event
        # leaving flight (one lock instead of two); metrics add them to the accounting's.
        self.inline_processed = 0
        # Of those, events already handled in slots a worker-mode executor still holds (a chunk
        # cut into several jobs is given back whole): Stats shows the difference.
        self.handled_in_held = 0
        self.closing = False
        self.closed = False
        self._last_publish = 0.0  # time.monotonic() of the latest publish() call
        # Follow-ups emitted and not yet handled. Reaching max_followups cuts ctx.emit off until
        # every one of them is handled: a cap alone would hold a storm (a handler that emits two
        # events per event) at the cap for ever; cut off, it dies down.
        self.max_followups = max_followups
        self.followups = 0
        self._followups_cut = False
        self._followup_slots: set[int] = set()  # worker mode: slots that hold a follow-up
        self._dispatcher = dispatcher
        self._batches: dict[Hashable, tuple[BatchRoute, ...]] = {}
        self._middleware: tuple[Middleware, ...] = ()
        self._config_version = 0
        self._routes: tuple[tuple[int, int], Routes] | None = None
        # Sync mode's one-event publish (publish_inline): the dispatcher version it was made
        # for, and the chain of every projection it may run alone (see _make_lean).
        self._lean: tuple[int, dict[Hashable, Chain]] | None = None
        # What its handlers emit, per thread (a bound method made once: no emitter per call).
        self._emitted = _Emitted()
        self._emit = self._emit_inline
        self._last_read: tuple[tuple[int, int | None], tuple[list[Event], Context, int]] | None = None
        # Submitted events (``submit``), by slot, from their write until their slot is given
        # back; and those dropped or closed under the lock, completed once it is released.
        self._submitted: dict[int, Submission] = {}
        self._ended: list[tuple[Submission, BaseException]] = []
        # asyncio callers waiting for room (asubscribe under BLOCK) or for idleness (aflush):
        # futures of their loops, woken with call_soon_threadsafe where the conditions are
        # notified, so no thread is parked per waiting coroutine.
        self._room_waiters: list[asyncio.Future[None]] = []
        self._idle_waiters: list[asyncio.Future[None]] = []

    # -- configuration ------------------------------------------------------------
    def add_batch(self, projection: Hashable, route: BatchRoute) -> None:
        with self.lock:
            self._batches[projection] = (*self._batches.get(projection, ()), route)
            self._config_version += 1
            self._lean = None

    def add_middleware(self, middleware: Middleware) -> None:
        with self.lock:
            self._middleware += (middleware,)
            self._config_version += 1
            self._lean = None

    def routes(self) -> Routes:
        """The routing snapshot for the next dispatch, rebuilt only when something changed."""
        version = (self._dispatcher.version, self._config_version)
        cached = self._routes
        if cached is not None and cached[0] == version:
            return cached[1]
        with self.lock:
            routes = Routes(self._dispatcher.snapshot(), dict(self._batches), self._middleware)
            self._routes = (version, routes)
            return routes

    def routes_and_key(self) -> tuple[Routes, object]:
        """The routing snapshot and a key that changes whenever workers need a new copy."""
        return self.routes(), (self._dispatcher.version, self._config_version, self.accounting.wants_results)

    # -- producing ----------------------------------------------------------------
    def subscribe(self, event: Event, ctx: Context | None, timeout: float | None, attempts: int = 0) -> None:
        """Check and encode ``event``, then (under the lock) make room and write it."""
        self.check_open()
        # A plain event that fits a slot alone joins the open slot (worker mode, see _gather).
        plain = type(event) is Event and ctx is None and not attempts and not self.keeps_objects
        payload, route, capacity = None, self._checked_route, self.slots.capacity
        if plain and event.projection is self._checked:
            # The usual event of a stream, its projection object checked before (see _encode):
            # pickled in one step.
            payload = encode_plain(event)
        if payload is None or len(payload) > capacity:
            encoded = self._encode(event, ctx, attempts)
            payload, route = encoded[0], encoded[2]
            if not plain or encoded[1] or encoded[3] or len(payload) > capacity:
                payload = None
        lock = self.lock
        take(lock)  # see _lock: several producing threads must not convoy here
        try:
            self.check_open()
            if payload is not None:
                self._gather(event, payload, route, timeout)
            else:
                self._enqueue(encoded, ctx, timeout, _keep(event, ctx, attempts))
        finally:
            lock.release()
            if self._ended:
                self._complete_ended()
        if self.changed is not None and _monotonic() >= self.tick_due:
            self.changed()

    def _gather(self, event: Event, payload: bytes, route: int, timeout: float | None) -> None:
        """Worker mode: a plain event joins the *open slot*, where consecutive single subscribes
        of one projection object gather until a publish (or any other write) seals them into
        one *run* (``FLAG_RUN``: their own pickles, one after another): the workers then meet
        them in one slot and one job entry, not a slot, an entry and a read each, while each
        is still decoded, and charged if it cannot be, on its own. The events count as
        written and pending at once (room, drops and ``stats()`` see them one by one). Only an
        event that fits a slot alone gathers, and a run grows past a slot only into a page that
        was free when it opened: sealing, done under the lock before any other write, needs no
        new memory and cannot fail. Under the lock."""
        slots = self.slots
        if slots.free_events < 1:
            self._reserve(1, None, timeout)  # may drop from the open slot, or wait and let it go
        events = self._open
        if (events is not None and slots.objects[self._open_slot] is events and route == self._open_route
                and event.projection is events[0].projection and len(events) < CHUNK_MAX
                and self._open_bytes + RUN_ITEM.size + len(payload) <= self._open_limit):
            events.append(event)
            self._open_payloads.append(payload)
            slots.live[self._open_slot] += 1
            slots.free_events -= 1
            self._open_bytes += len(payload) + RUN_ITEM.size
        else:
            self._seal()
            slot = slots.take(1)
            events = [event]
            slots.objects[slot] = events  # unused by worker mode otherwise: it marks the slot open
            # Sealed, the run goes where a subscribe_many chunk would: into the slot, or into
            # an arena page if one is free now (no other write comes before the seal, so it
            # still is then).
            self._open_limit = slots.page_size if slots.free_pages else slots.capacity
            self._open, self._open_slot, self._open_route = events, slot, route
            self._open_seq, self._open_payloads = slots.counts["written"] + 1, [payload]
            self._open_bytes = len(payload) + RUN_ITEM.size
            slots.pending.append(slot)
        slots.counts["written"] += 1
        self.published += 1

    def _seal(self) -> None:
        """Write the open slot's events into it (see ``_gather``); under the lock. A slot whose
        every event was dropped meanwhile is free already."""
        events, slot = self._open, self._open_slot
        if events is None:
            return
        self._open = None
        slots = self.slots
        if slots.objects[slot] is not events:
            return
        slots.objects[slot] = None
        payloads = self._open_payloads
        payload, flags = (payloads[0], 0) if len(payloads) == 1 else (encode_run(payloads), FLAG_RUN)
        slots.write(slot, self._open_seq, self._open_route, payload, flags)

    def _encode(self, event: Event, ctx: Context | None, attempts: int) -> Encoded:
        if self.keeps_objects and attempts == 0:
            # The pickle is the check that the event could travel; the slot keeps the object.
            # A projection object that passed its check once is not checked again.
            if type(event) is not Event or event.projection is not self._checked or ctx is not None:
                check_event(event, ctx)
                if self.check_pickle:
                    check_pickles(event, ctx)
                if type(event) is Event:
                    # Checked and (with check_pickle) pickled whole: subscribe_inline takes
                    # events of this projection object, and pickles only what else they hold.
                    self._checked = event.projection
            elif self.check_pickle:
                check_pickles(event, ctx)
            return _KEPT_ONE
        if type(event) is Event and ctx is None and attempts == 0:
            # The usual event of a stream: its projection object was checked (and hashed)
            # once, when it first came; only the pickle is made per event.
            projection = event.projection
            if projection is not self._checked:
                check_event(event, None)
                self._checked, self._checked_route = projection, hash(projection)
            payload, flags, buffers = encode_event(event)
            return payload, flags, self._checked_route, buffers, 1
        return encode_one(event, ctx, attempts)

    def submit(self, event: Event, ctx: Context | None, timeout: float | None) -> Future[list[Result]]:
        """Subscribe ``event`` with a :class:`Submission` attached to its slot, then publish.

        In worker mode the slot's ``FLAG_REPORT`` makes the worker send every outcome of this
        event, as it does for all events when hooks are registered; events not submitted
        send what they sent before. Routes that cannot reach the workers are refused before
        the event is taken, so a refused ``submit`` leaves the store unchanged.
        """
        self.check_open()
        self.executor.check_routes(*self.routes_and_key())
        payload, flags, route, buffers, count = self._encode(event, ctx, 0)
        encoded: Encoded = (payload, flags if self.keeps_objects else flags | FLAG_REPORT, route, buffers, count)
        submission = Submission(None if self.keeps_objects else SubmitFuture(self.help_wait))
        try:
            with self.lock:
                self.check_open()
                slot = self._enqueue(encoded, ctx, timeout, _keep(event, ctx, 0))
                self._submitted[slot] = submission
        finally:
            if self._ended:
                self._complete_ended()
        if self.changed is not None and _monotonic() >= self.tick_due:
            self.changed()
        try:
            self.publish()
        except StoreClosed:
            pass  # drain() began meanwhile: it completes the future with the event's dead letter
        return submission.future

    def help_wait(self, done: Callable[[], bool], seconds: float) -> None:
        """A caller waits for a submitted event's future (``SubmitFuture.result``): it takes
        outcomes in itself for up to ``seconds`` or until ``done()``, as ``flush()`` does, so
        that a short round trip wakes one thread instead of two. Not inside a handler or hook
        (their thread may be the one reading, or the one the result waits for), nor once the
        store is closing (the executor is being stopped)."""
        if self.closing or current_emitter.get() is not None or inside_hook():
            return
        self.executor.help_collect(done, seconds)

    def _end_submission(self, slot: int, error: BaseException) -> None:
        """The event in ``slot`` will not be handled (dropped, closed): its future fails with
        ``error`` once the lock is released. Under the lock."""
        submission = self._submitted.pop(slot, None)
        if submission is not None:
            self._ended.append((submission, error))

    def _complete_ended(self) -> None:
        """Complete the futures of events that were dropped or closed; outside the lock, since
        a future's callbacks run in the thread that completes it."""
        with self.lock:
            ended, self._ended = self._ended, []
        for submission, error in ended:
            submission.complete(error)

    def subscribe_many(self, events: Iterable[Event], ctx: Context | None, timeout: float | None) -> int:
        self.check_open()
        chunks = encode_many(list(events), ctx, self.slots.chunk_capacity, self.slots.slot_count)
        accepted = 0
        lock = self.lock
        take(lock)  # see _lock
        try:
            self.check_open()
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
        finally:
            lock.release()
            if self._ended:
                self._complete_ended()
            if self.changed is not None and _monotonic() >= self.tick_due:
                self.changed()

    def _pieces(self, chunk: Encoded, members: list[Event], ctx: Context | None) -> list[tuple[Encoded, list[Event]]]:
        """How a chunk goes into the ring: whole, or (rarely) cut smaller. Under the lock.

        Cut to single events when the ring cannot take it whole and the policy would refuse
        or wait (so that as many events as fit are accepted); cut to slot size when every
        arena page is taken (a spill block per chunk would cost more than the cutting).
        """
        slots = self.slots
        if slots.free_events < chunk[4] and self.policy is not OverrunPolicy.DROP_OLDEST:
            return [(encode_one(event, ctx), [event]) for event in members]
        if len(members) > 1 and not self.keeps_objects and slots.would_spill(chunk[0], chunk[3]):
            return encode_many(members, ctx, slots.capacity, slots.slot_count)
        return [(chunk, members)]

    def _enqueue(self, encoded: Encoded, ctx: Context | None, timeout: float | None, held: Kept) -> int:
        """Make room (per policy), write one slot, append it to the pending list; the slot.
        Under the lock."""
        slots = self.slots
        if not self.keeps_objects and (encoded[3] or len(encoded[0]) > slots.capacity):
            slots.check_spill_room([(encoded[0], encoded[3])])
        if slots.free_events < encoded[4]:
            self._reserve(encoded[4], ctx, timeout)
        slot = self._write(encoded, held)
        self.slots.pending.append(slot)
        self.published += encoded[4]
        return slot

    def _write(self, encoded: Encoded, held: Kept | None) -> int:
        """Take a slot and fill it: the one place a slot is written. Its sequence number is
        that of its first event. A write that fails gives the slot back before raising.

        Sync mode keeps the events themselves (``held``): the pickle only proved that they
        could travel, and handlers get the very objects that were subscribed, as with any
        in-process bus. Worker mode writes the pickle into shared memory for the workers.
        """
        payload, flags, route, buffers, events = encoded
        if self._open is not None:
            self._seal()  # the open slot's events were subscribed first
        slots = self.slots
        slot = slots.take(events)
        if self.keeps_objects and held is not None:
            slots.objects[slot] = held
        else:
            try:
                slots.write(slot, slots.counts["written"] + 1, route, payload, flags, buffers)
            except BaseException:
                slots.untake(slot)
                raise
        slots.counts["written"] += events
        return slot

    def _reserve(self, count: int, ctx: Context | None, timeout: float | None) -> None:
        """Make room for ``count`` events (all or none), applying the overrun policy. Under the lock."""
        slots = self.slots
        if slots.free_events >= count:
            return
        if count > slots.slot_count:
            raise BufferFull(f"{count} events cannot fit a ring of {slots.slot_count} slots; "
                             "raise buffer_size or commit smaller groups")
        deadline = deadline_of(timeout, ctx)
        waiting_since = time.monotonic()
        while slots.free_events < count:
            if self.policy is OverrunPolicy.DROP_OLDEST and slots.pending:
                oldest = slots.pending[0]
                slots.drop_oldest_pending()
                if slots.counts["dropped"] == 1 or time.monotonic() - self._drops_logged_at >= DROP_LOG_SECONDS:
                    self.log_drops()
                if self._submitted and slots.live[oldest] == 0:
                    self._end_submission(oldest, BufferFull(
                        "the submitted event was dropped by DROP_OLDEST before it was published: the "
                        "ring was full; publish() sooner, raise buffer_size, or choose BLOCK"))
                continue
            if self.policy is OverrunPolicy.RETURN_ERROR:
                raise BufferFull(
                    f"ring full: room for {slots.slot_count} events, {slots.free_events} free, {count} needed; "
                    "publish() to make room, or choose BLOCK or DROP_OLDEST")
            # BLOCK, or DROP_OLDEST when every slot is held by work already handed off.
            now = time.monotonic()
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"ring stayed full ({slots.slot_count} slots) until the timeout")
            if self.in_flight == 0 and now - max(waiting_since, self._last_publish) >= BLOCK_GRACE_SECONDS:
                raise BufferFull(
                    f"the ring is full of events no one has published ({slots.slot_count} slots, "
                    f"{len(slots.pending)} pending, nothing in flight) and no publish() came for "
                    f"{BLOCK_GRACE_SECONDS:g} s; call publish() to hand them to the handlers (before "
                    "subscribing more, or from another thread), or choose DROP_OLDEST or RETURN_ERROR")
            self._wait_room(BLOCK_GRACE_SECONDS if remaining is None else min(remaining, BLOCK_GRACE_SECONDS))
            self.check_open()

    # -- dispatching --------------------------------------------------------------
    def publish(self) -> int:
        """Hand every pending event to the executor; returns how many were taken."""
        self._last_publish = time.monotonic()
        self.check_open()
        if not self.keeps_objects:  # in sync mode nothing travels: no routes to check
            self.executor.check_routes(*self.routes_and_key())
        elif _loop_running():  # sync mode cannot await inside a running loop
            asyncs = async_projections(self.routes())
            if asyncs:
                with self.lock:
                    self._refuse_async_in_loop(asyncs)
        slots, events = self._take_pending()
        if not slots:
            return 0
        try:
            self.executor.submit(slots)
        finally:
            if self.changed is not None and _monotonic() >= self.tick_due:
                self.changed()
        return events

    def _take_pending(self) -> tuple[list[int], int]:
        """Every pending slot, and its events, moved into flight (one caller gets each)."""
        lock = self.lock
        take(lock)  # see _lock
        try:
            if self._open is not None:
                self._seal()
            slots = self.slots.take_pending()
            events = self.slots.live_events(slots)
            if slots:
                self._hand_off(events)
            return slots, events
        finally:
            lock.release()

    def _refuse_async_in_loop(self, projections: frozenset[Hashable]) -> None:
        """Sync-mode ``publish()`` inside a running event loop cannot await: refuse, before any
        event is taken, if a pending event has an ``async def`` handler. Under the lock."""
        table = self.slots
        for slot in table.pending:
            for event in _unkeep(table.objects[slot])[0]:
                if event.projection in projections:
                    raise RuntimeError(
                        f"publish() inside a running event loop cannot await the async def handlers of "
                        f"{event.projection!r} (sync mode); use `await store.apublish()` (or asubmit), "
                        "or workers=N")

    async def apublish(self) -> int:
        """``publish()`` for a coroutine. Worker mode hands off as ``publish()`` does (it never
        waits for handlers); sync mode runs the handlers here and awaits the ``async def``
        ones in the caller's loop, those of different events concurrently."""
        if not isinstance(self.executor, InlineExecutor):
            return self.publish()
        self.check_open()
        slots, events = self._take_pending()
        if not slots:
            return 0
        try:
            await self.executor.asubmit(slots)
        finally:
            if self.changed is not None:
                self.changed()
        return events

    async def asubscribe(self, event: Event, ctx: Context | None, timeout: float | None,
                         submission: Submission | None = None) -> None:
        """``subscribe`` for a coroutine: where ``subscribe`` would wait for room (BLOCK, or
        DROP_OLDEST with nothing pending to drop) it awaits a wake-up from the thread that
        frees a slot instead of blocking the loop."""
        self.check_open()
        payload, flags, route, buffers, count = self._encode(event, ctx, 0)
        if submission is not None and not self.keeps_objects:
            flags |= FLAG_REPORT
        encoded: Encoded = (payload, flags, route, buffers, count)
        deadline = deadline_of(timeout, ctx)
        loop = asyncio.get_running_loop()
        while True:
            waiter: asyncio.Future[None] | None = None
            try:
                with self.lock:
                    self.check_open()
                    table = self.slots
                    if table.free_events < 1 and (self.policy is OverrunPolicy.BLOCK or (
                            self.policy is OverrunPolicy.DROP_OLDEST and not table.pending)):
                        waiter = loop.create_future()
                        self._room_waiters.append(waiter)
                    else:
                        slot = self._enqueue(encoded, ctx, None, _keep(event, ctx, 0))
                        if submission is not None:
                            self._submitted[slot] = submission
            finally:
                if self._ended:
                    self._complete_ended()
            if waiter is None:
                if self.changed is not None:
                    self.changed()
                return
            self.executor.attend(1)
            try:
                await _wait(waiter, deadline, f"ring stayed full ({self.slots.slot_count} slots) until the timeout")
            finally:
                self.executor.attend(-1)
                self._forget(self._room_waiters, waiter)

    async def asubmit(self, event: Event, ctx: Context | None) -> Future[list[Result]]:
        """``submit`` for a coroutine: ``asubscribe`` (room awaited), then ``apublish``."""
        self.check_open()
        self.executor.check_routes(*self.routes_and_key())
        submission = Submission()
        await self.asubscribe(event, ctx, None, submission)
        # One turn of the loop before publishing: the other coroutines of this turn subscribe
        # too, and the first publish hands them all off at once (one plan, jobs of many events)
        # instead of a publish, a job and a worker round trip each.
        await asyncio.sleep(0)
        try:
            await self.apublish()
        except StoreClosed:
            pass  # drain() began meanwhile: it completes the future with the event's dead letter
        return submission.future

    async def await_idle(self, deadline: float | None, timeout: float | None) -> None:
        """Await until nothing is in flight; ``TimeoutError`` past the monotonic ``deadline``."""
        loop = asyncio.get_running_loop()
        while True:
            with self.lock:
                if self.in_flight == 0:
                    return
                waiter: asyncio.Future[None] = loop.create_future()
                self._idle_waiters.append(waiter)
            self.executor.attend(1)
            try:
                await _wait(waiter, deadline, f"aflush(): events still in flight after {timeout} s")
            finally:
                self.executor.attend(-1)
                self._forget(self._idle_waiters, waiter)

    def _forget(self, waiters: list[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
        with self.lock:
            if waiter in waiters:
                waiters.remove(waiter)

    def _notify_room(self) -> None:
        """Slots were freed (or the bus closed): wake blocked producers, threads and coroutines.
        Under the lock."""
        if self._room_sleepers:
            self._room.notify_all()
        if self._room_waiters:
            _wake(self._room_waiters)
            self._room_waiters = []

    def _hand_off(self, events: int) -> None:
        """Events leave the pending list for an executor: in flight, and past the dispatched
        cursor. Under the lock."""
        self.in_flight += events
        self.slots.counts["dispatched"] += events

    def run_now(self, events: Sequence[Event], ctx: Context | None, *, raise_first: bool,
                on_enqueued: Callable[[], None] | None = None, timeout: float | None = None) -> None:
        """Enqueue ``events`` all or nothing and handle exactly them, in order, before returning
        (transactions, schedules due now, timers)."""
        self.check_open()
        if not self.keeps_objects:  # a refusal (routes that cannot travel, a broken pool) takes nothing
            self.executor.check_routes(*self.routes_and_key())
        encoded = [encode_one(event, ctx) for event in events]
        if not encoded:
            return
        ticket = Ticket()
        try:
            with self.lock:
                self.check_open()
                if not self.keeps_objects:
                    self.slots.check_spill_room([(item[0], item[3]) for item in encoded])
                self._reserve(len(encoded), ctx, timeout)
                slots: list[int] = []
                try:
                    for item, event in zip(encoded, events):
                        slots.append(self._write(item, _keep(event, ctx, 0)))
                except BaseException:
                    for slot in slots:  # all or nothing
                        self.slots.untake(slot)
                    raise
                self.published += len(slots)
                self._hand_off(len(slots))
        finally:
            if self._ended:
                self._complete_ended()
        if on_enqueued is not None:
            on_enqueued()
        self.executor.submit(slots, ticket)
        self.executor.wait(ticket, None)
        if raise_first and ticket.errors:
            raise ticket.errors[0]

    def replay(self, letters: list[DeadLetter], ctx: Context | None) -> tuple[list[DeadLetter], BaseException | None]:
        """Re-subscribe dead letters in rounds that fit the ring's room, publishing after each.

        No policy applies to them: a round takes only the room there is, so nothing is dropped,
        refused or waited on for ever. Returns the letters that could not be enqueued at all
        and the first error that kept one out.
        """
        queue = deque(letters)
        left: list[DeadLetter] = []
        first_error: BaseException | None = None
        while queue:
            with self.lock:
                if self.closing:
                    first_error = first_error or StoreClosed(
                        "the store was drained; replay the dead letters into a new EventStore")
                    left.extend(queue)
                    break
                room, pending = self.slots.free_events, bool(self.slots.pending)
                if room == 0 and not pending:
                    self._wait_room(0.5)  # workers hold every slot: wait for them to give some back
                    continue
            if room == 0:
                self._publish_unless_closed()  # other producers' pending events fill the ring
                continue
            round_: list[tuple[DeadLetter, Encoded]] = []
            for letter in [queue.popleft() for _ in range(min(room, len(queue)))]:
                try:
                    round_.append((letter, encode_one(letter.event, ctx, letter.attempts)))
                except Exception as exc:
                    first_error = first_error or exc
                    left.append(letter)
            later: list[DeadLetter] = []
            with self.lock:
                for letter, encoded in round_:
                    if self.slots.free_events < 1:
                        later.append(letter)  # room went to another producer: next round
                        continue
                    try:
                        if not self.keeps_objects:
                            self.slots.check_spill_room([(encoded[0], encoded[3])])
                        slot = self._write(encoded, _keep(letter.event, ctx, letter.attempts))
                    except Exception as exc:
                        first_error = first_error or exc
                        left.append(letter)
                        continue
                    self.slots.pending.append(slot)
                    self.published += 1
            queue.extendleft(reversed(later))
            self._publish_unless_closed()
        return left, first_error

    def _publish_unless_closed(self) -> None:
        try:
            self.publish()
        except StoreClosed:
            pass  # drain() took over what was enqueued; the next round keeps the rest

    # -- sync mode, one event at a time -------------------------------------------
    def subscribe_inline(self, event: Event, ctx: Context | None, timeout: float | None) -> None:
        """Sync mode's ``subscribe``: the same contract as :meth:`subscribe`, in one call and one
        lock for a plain :class:`Event` with no context whose projection object passed its
        checks last time (``_encode``); anything else goes through :meth:`subscribe`.

        With ``check_pickle`` only what the cached check did not cover is pickled: the payload,
        unless it is a plain scalar (the whole event when ``id`` or ``args`` is unusual).
        """
        if type(event) is not Event or ctx is not None or event.projection is not self._checked:
            return self.subscribe(event, ctx, timeout)
        if self.check_pickle:
            if type(event.id) is not str or event.args is not None:
                check_pickles(event, None)
            elif type(event.data) not in _SCALARS:
                try:
                    _dumps(event.data, PROTOCOL)
                except Exception:
                    check_pickles(event, None)  # raises the full check's TypeError naming the event
        lock = self.lock
        table = self.slots
        take(lock)  # see _lock
        try:
            if self.closing:
                raise StoreClosed(DRAINED)
            if table.free_events < 1:
                self._reserve(1, None, timeout)
            slot = table.free.pop()
            table.live[slot] = 1
            table.first[slot] = 0
            table.free_events -= 1
            table.objects[slot] = event
            table.counts["written"] += 1
            table.pending.append(slot)
            self.published += 1
        finally:
            lock.release()
            if self._ended:  # DROP_OLDEST dropped a submitted event to make room
                self._complete_ended()
        changed = self.changed
        if changed is not None and _monotonic() >= self.tick_due:
            changed()
        return None

    def publish_inline(self) -> int:
        """Sync mode's ``publish()``: the same contract as :meth:`publish`. When the one pending
        event is a plain :class:`Event` (no context, not submitted) of a projection with
        per-event handlers only, none of them ``async def``, and no hook is registered, its
        slot is claimed and given back in one lock and its chain runs here, with no run,
        generator or tally made for it; a handler that fails goes to the accounting as in
        any publish, one that returns an awaitable or emits follow-ups hands the rest to
        ``InlineExecutor.finish_one``. Anything else goes through :meth:`publish`.
        """
        if self._blocking:
            self._last_publish = _monotonic()
        lean = self._lean
        if lean is None or lean[0] != self._dispatcher.version:
            lean = self._make_lean()
        table = self.slots
        pending = table.pending
        accounting = self.accounting
        chain: Chain | None = None
        lock = self.lock
        take(lock)  # see _lock
        try:
            if self.closing:
                raise StoreClosed(DRAINED)
            if len(pending) == 1 and not accounting.wants_results:
                slot = pending[0]
                event = table.objects[slot]
                if type(event) is Event and (chain := lean[1].get(event.projection)) is not None \
                        and not (self._submitted and slot in self._submitted):
                    # Claimed and given back at once, as claim_runs does: the slot held the object only.
                    pending.clear()
                    self.in_flight += 1
                    table.objects[slot] = None
                    table.live[slot] = 0
                    table.free.append(slot)
                    table.free_events += 1
                    counts = table.counts
                    counts["dispatched"] += 1
                    counts["released"] += 1
                    if self._room_sleepers or self._room_waiters:
                        self._notify_room()
        finally:
            lock.release()
        if chain is None:
            return self.publish() if pending else 0
        emitted = self._emitted.runs
        mark = len(emitted)  # follow-ups past it are this call's (a nested publish takes its own)
        deferred: Continuation | None = None
        succeeded = called = 0
        reset = current_emitter.set(self._emit)
        try:
            for fn, name in chain:
                called += 1
                try:
                    result = fn(BACKGROUND, event)
                except Exception as exc:
                    accounting.after(Item(event, BACKGROUND), name, None, exc)
                    continue
                if result is not None and type(result) is not Result and isinstance(result, Awaitable):
                    # A sync handler that returned an awaitable (or a middleware made it async).
                    deferred = ChainRest(result, name, chain[called:], Item(event, BACKGROUND), accounting,
                                         self._emit)
                    break
                succeeded += 1
        except BaseException:  # Ctrl-C in a handler: nothing stays in flight
            followups = emitted[mark:]
            del emitted[mark:]
            accounting.count(succeeded, 0)
            self.finished(1 + len(followups))
            self.followups_done(len(followups))
            raise
        finally:
            current_emitter.reset(reset)
        if deferred is not None or len(emitted) > mark:
            accounting.count(succeeded, 0)
            self._finish_inline(deferred, emitted, mark)
        else:
            lock.acquire()
            try:  # the successes counted and the event out of flight in one lock (see metrics)
                self.inline_processed += succeeded
                self.in_flight -= 1
                if self.in_flight == 0 and (self._idle_sleepers or self._idle_waiters):
                    self._notify_idle()
            finally:
                lock.release()
        changed = self.changed
        if changed is not None and _monotonic() >= self.tick_due:
            table.sync_header()  # the cursor mirror, which claim_runs writes at every other publish
            changed()
        return 1

    def _emit_inline(self, event: Event, ctx: Context) -> None:
        """``ctx.emit`` in a handler that publish_inline runs: checked and counted, then kept
        in this thread's list until that publish takes it."""
        self.accept_followup(event, ctx)
        self._emitted.runs.append(followup_run(event, ctx))

    def _finish_inline(self, deferred: Continuation | None, emitted: list[Run], mark: int) -> None:
        """The rest of a publish_inline whose handler returned an awaitable or emitted: await
        the one, handle the others (``emitted[mark:]``, taken out of this thread's list), and
        what they emit in turn, as the general path does (``InlineExecutor.finish_one``)."""
        followups = emitted[mark:]
        del emitted[mark:]
        if deferred is not None:  # what the awaited rest emits joins this call's list, as in the rounds

            def emit(event: Event, ctx: Context) -> None:
                self.accept_followup(event, ctx)
                followups.append(followup_run(event, ctx))

            deferred.emit = emit
        cast(InlineExecutor, self.executor).finish_one([deferred] if deferred is not None else [], followups)

    def _make_lean(self) -> tuple[int, dict[Hashable, Chain]]:
        """What publish_inline may run alone: the chain of each projection that has per-event
        handlers, no batch handler and no ``async def`` handler (those need the rounds)."""
        version = self._dispatcher.version
        routes = self.routes()
        asyncs = async_projections(routes)
        chains = {projection: routes.chains(projection) for projection, handlers in routes.handlers.items()
                  if handlers and projection not in routes.batches and projection not in asyncs}
        lean = (version, chains)
        self._lean = lean
        return lean

    # -- the executor's host side (see _workers.executor.Host) ----------------------
    def claim_runs(self, slots: Sequence[int], ticket: Ticket | None) -> tuple[int, list[Run]]:
        """Sync mode: take the events of claimed slots and give the slots back at once.
        A submitted event is a run of its own, carrying its submission."""
        table = self.slots
        with self.lock:
            runs: list[Run] = []
            singles: list[Event] = []  # consecutive lone events, run together
            submitted = self._submitted
            for slot in slots:
                kept = table.objects[slot]
                submission = submitted.pop(slot, None) if submitted else None
                if type(kept) is not tuple and submission is None:
                    singles.append(kept)
                    continue
                if singles:
                    runs.append((singles, BACKGROUND, 0, ticket, None))
                    singles = []
                held, ctx, attempts = _unkeep(kept)
                first = table.first[slot]
                if first or table.live[slot] != len(held):  # the front of a chunk was dropped
                    held = held[first: first + table.live[slot]]
                runs.append((held, ctx if ctx is not None else BACKGROUND, attempts, ticket, submission))
            if singles:
                runs.append((singles, BACKGROUND, 0, ticket, None))
            events = table.release(list(slots))
            table.sync_header()
            self._notify_room()
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
            payload, flags, buffers = self.slots.read(slot, seq)
            events, ctx, attempts = decode_events(payload, flags, buffers)
            decoded = (events, ctx if ctx is not None else BACKGROUND, attempts)
        except Exception:
            decoded = ([Event(UNDECODABLE, bytes(payload))] * CHUNK_MAX, BACKGROUND, 0)
        self._last_read = (key, decoded)
        return decoded

    def submission_at(self, slot: int) -> Submission | None:
        return self._submitted.get(slot) if self._submitted else None

    def item_at(self, slot: int, seq: int, index: int, ticket: Ticket | None) -> Item:
        """Worker mode: event ``index`` of a slot a worker reported on, decoded again here for hooks and DLQ."""
        events, ctx, attempts = self._read_slot(slot, seq)
        return Item(events[index], ctx, attempts, ticket, -1, self._submitted.get(slot) if self._submitted else None)

    def release(self, slots: list[int]) -> None:
        """Worker mode: these slots' events are fully handled; reuse the slots. A submitted
        event's future completes here: every job that named its slot has reported, so every
        outcome is recorded. It completes before the event leaves flight, so that a caller
        whose ``flush()`` returned finds its futures done."""
        done: list[Submission] = []
        with self.lock:
            events = self.slots.release(slots)
            self.slots.sync_header()
            if self._submitted:
                done = [s for s in map(self._submitted.pop, slots, [None] * len(slots)) if s is not None]
            self._notify_room()
            if self._followup_slots:
                followups = self._followup_slots.intersection(slots)
                self._followup_slots -= followups
                self.followups_done(len(followups))
        for submission in done:
            submission.complete()
        self.finished(events)

    def place_followups(self, encoded: list[Encoded]) -> list[int]:
        """Worker mode: write as many follow-ups as there are free slots; no policy applies."""
        placed: list[int] = []
        with self.lock:
            for item in encoded:
                if self.slots.free_events < 1:
                    break
                placed.append(self._write(item, None))
            self.slots.counts["dispatched"] += len(placed)  # already counted in flight when emitted
            self._followup_slots.update(placed)
        return placed

    def count_followup(self) -> None:
        with self.lock:
            self.published += 1
            self.in_flight += 1
            self.followups += 1
            if self.followups >= self.max_followups:
                self._followups_cut = True

    def accept_followup(self, event: Event, ctx: Context | None) -> None:
        """A handler's ``ctx.emit(event)``: counted as published and as work in flight;
        ``BufferFull`` while follow-ups are cut off (see ``max_followups``)."""
        encode_one(event, ctx)  # reject what could not travel to a worker, in every mode
        with self.lock:
            if self._followups_cut or self.followups >= self.max_followups:
                self._followups_cut = True
                raise BufferFull(followups_refused(self.max_followups))
            self.count_followup()

    def followup_room(self) -> int:
        """How many more follow-ups may be emitted now (what workers check in ``emit``)."""
        return 0 if self._followups_cut else max(0, self.max_followups - self.followups)

    def followups_done(self, count: int) -> None:
        """``count`` follow-ups were handled (or became dead letters)."""
        if not count:
            return
        with self.lock:
            self.followups = max(0, self.followups - count)
            if self.followups == 0:
                self._followups_cut = False  # the storm is over

    def handled_early(self, change: int) -> None:
        """Worker mode: ``change`` more (or, as their slots come back, fewer) events are handled
        while their slots are still held; only what ``stats()`` shows as in flight moves."""
        with self.lock:
            self.handled_in_held += change

    def finished(self, count: int) -> None:
        with self.lock:
            self.in_flight -= count
            if self.in_flight == 0:
                self._notify_idle()

    def _notify_idle(self) -> None:
        """Nothing is in flight: wake whoever waits for that (threads, coroutines). Under the lock."""
        if self._idle_sleepers:
            self._idle.notify_all()
        if self._idle_waiters:
            _wake(self._idle_waiters)
            self._idle_waiters = []

    def _wait_room(self, timeout: float | None) -> None:
        """Wait (holding the lock) until slots are freed or ``timeout`` passes."""
        self._room_sleepers += 1
        self.executor.attend(1)
        try:
            self._room.wait(timeout)
        finally:
            self.executor.attend(-1)
            self._room_sleepers -= 1

    # -- waiting and closing ------------------------------------------------------
    def wait_idle(self, deadline: float | None, timeout: float | None) -> None:
        """Block until nothing is in flight; ``TimeoutError`` past the monotonic ``deadline``."""
        with self.lock:
            if self.in_flight == 0:
                return
            self.executor.attend(1)
            try:
                while self.in_flight > 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"flush(): {self.in_flight} events still in flight after {timeout} s")
                    self._idle_sleepers += 1
                    try:
                        self._idle.wait(remaining)
                    finally:
                        self._idle_sleepers -= 1
            finally:
                self.executor.attend(-1)

    def start_closing(self) -> bool:
        """Mark the bus closing; False if it already was (drain is idempotent)."""
        with self.lock:
            if self.closing:
                return False
            self.closing = True
            return True

    def log_drops(self) -> None:
        """WARNING for the first dropped event, then the count since the last line (rate-limited
        by the caller; ``drain()`` logs what is left)."""
        dropped = self.slots.counts["dropped"]
        new = dropped - self._drops_logged
        if new <= 0:
            return
        if self._drops_logged == 0:
            log.warning("busmp store %r dropped its oldest pending event: the ring (%d events) was full "
                        "(DROP_OLDEST). publish() more often, raise buffer_size, or choose BLOCK",
                        self.name, self.slots.slot_count)
            new -= 1
            self._drops_logged = 1
        if new > 0:
            log.warning("busmp store %r dropped %d more pending events (%d in all) since the last "
                        "report (DROP_OLDEST, ring of %d events full)", self.name, new, dropped,
                        self.slots.slot_count)
        self._drops_logged = dropped
        self._drops_logged_at = time.monotonic()

    def close_pending(self) -> None:
        """Events subscribed but never published become ``StoreClosed`` dead letters."""
        with self.lock:
            table = self.slots
            self._seal()
            self.log_drops()
            table.closed_events += table.pending_events
            for slot in table.take_pending():
                events = _unkeep(table.objects[slot])[0] if self.keeps_objects else self._read_slot(slot)[0]
                for event in events[table.first[slot]: table.first[slot] + table.live[slot]]:
                    error = self.dead_on_close(event, "never published")
                    self._end_submission(slot, error)
            self.closed = True
            self._notify_room()
        self._complete_ended()

    def dead_on_close(self, event: Event, why: str) -> StoreClosed:
        error = StoreClosed(f"store drained; the event was {why}")
        self.accounting.dead_letter(event, error, 1, NOT_DISPATCHED)
        return error

    def end_submissions(self, error: BaseException) -> None:
        """Fail every future still waiting (the store is abandoned, or closed with work that
        no executor reported on): a future is never left pending."""
        with self.lock:
            for slot in list(self._submitted):
                self._end_submission(slot, error)
        self._complete_ended()

    def check_open(self) -> None:
        if self.closing:
            raise StoreClosed(DRAINED)

    # -- observing ----------------------------------------------------------------
    def metrics(self) -> Metrics:
        accounting = self.accounting
        return Metrics(self.published, accounting.processed + self.inline_processed, accounting.errors)

    def state(self) -> int:
        """The store's state word for the statistics block."""
        return CLOSED if self.closed else CLOSING if self.closing else OPEN

    def counters(self) -> tuple[int, int, int, int, int, int, int, int]:
        """The statistics block's counter line (``_transport.stats.COUNTERS`` order), in events.
        Read without the lock: each value is one int read whole; they may be a moment apart."""
        accounting, table = self.accounting, self.slots
        return (self.published, accounting.processed + self.inline_processed, accounting.errors,
                table.counts["dropped"], table.pending_events, max(0, self.in_flight - self.handled_in_held),
                accounting.dead_letters, accounting.unhandled)

    def stats(self, rates: tuple[float, float, float, float]) -> Stats:
        with self.lock:
            table = self.slots
            published, processed, errors, dropped, pending, in_flight, dead, unhandled = self.counters()
            free_events, free_pages = table.free_events, len(table.free_pages)
        per_worker = self.executor.per_worker()
        block = self.stats_block
        lines = [block.worker_line(k) for k in range(len(per_worker))]
        return Stats(
            published=published, processed=processed, errors=errors, dropped=dropped,
            pending=pending, in_flight=in_flight, dead_letters=dead, free_slots=free_events,
            slots=table.slot_count, workers=self.executor.workers, per_worker=per_worker,
            free_pages=free_pages, pages=table.page_count, unhandled=unhandled, name=self.name,
            pid=os.getpid(), state=STORE_STATES[self.state()],
            worker_pids=tuple(pid for pid, _, _ in lines),
            worker_states=tuple(WORKER_STATES.get(state, "unknown") for _, state, _ in lines),
            worker_since=tuple(since for _, _, since in lines),
            published_rate=rates[0], processed_rate=rates[1], errors_rate=rates[2], dropped_rate=rates[3],
            updated=time.time(),
        )


class _Emitted(threading.local):
    """Follow-ups emitted by the handlers publish_inline runs in this thread, oldest first: a
    call takes those past the length it found, so a publish nested in a handler takes only its own."""

    def __init__(self) -> None:
        self.runs: list[Run] = []


#: Payload types whose values always pickle (exact types: a subclass may not).
_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
DRAINED = "the store was drained; create a new EventStore to publish again"


def _loop_running() -> bool:
    # The non-raising form of get_running_loop(): sync publish() asks on every call.
    return asyncio._get_running_loop() is not None


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    """Wake coroutines of any loop, from any thread."""
    for waiter in waiters:
        try:
            waiter.get_loop().call_soon_threadsafe(_set_done, waiter)
        except RuntimeError:
            pass  # its loop is closed: nobody waits any more


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


async def _wait(waiter: asyncio.Future[None], deadline: float | None, message: str) -> None:
    remaining = None if deadline is None else deadline - time.monotonic()
    if remaining is not None and remaining <= 0:
        raise TimeoutError(message)
    try:
        await asyncio.wait_for(waiter, remaining)
    except TimeoutError:
        raise TimeoutError(message) from None


def followups_refused(limit: int) -> str:
    return (f"ctx.emit refused: the store's max_followups ({limit}) follow-up events were outstanding, "
            "and emit stays refused until every one of them has been handled. A handler that emits "
            "more than one event per event it handles makes a storm that never ends; emit fewer, or "
            "raise EventStore(..., max_followups=N)")


def _keep(event: Event, ctx: Context | None, attempts: int) -> Kept:
    return event if ctx is None and attempts == 0 else ([event], ctx, attempts)


def _unkeep(kept: Kept) -> Held:
    return kept if isinstance(kept, tuple) else ([kept], None, 0)


def deadline_of(timeout: float | None, ctx: Context | None) -> float | None:
    """A ``time.monotonic()`` deadline from a timeout and a context's wall-clock deadline."""
    candidates = []
    if timeout is not None:
        candidates.append(time.monotonic() + timeout)
    remaining = ctx.remaining() if ctx is not None else None
    if remaining is not None:
        candidates.append(time.monotonic() + remaining)
    return min(candidates) if candidates else None
