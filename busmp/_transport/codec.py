"""Turning events into bytes and back.

An event travels as one pickle (protocol 5). Plain :mod:`pickle` is tried first because it is
the fastest; :mod:`cloudpickle` takes over only where plain pickle cannot (lambdas, local
classes, objects defined interactively). Events that carry a context or earlier attempts travel
as an *envelope* ``(event, ctx, attempts)``; the flag word in the slot header says which form
and which pickler wrote it, so a reader never guesses.

One event travels as the tuple of its fields. A *chunk* (many events in one slot) travels by
column: ``(projection, datas, ids, args)``, the projection once when every event shares that
very object (else a list, ``FLAG_MIXED``), and ``ids``/``args`` as ``None`` when all are the
defaults. Columns pickle smaller than rows, and the reader builds the events with C-level
loops instead of one ``Event.__init__`` call each.

A *run* (``FLAG_RUN``, single subscribes gathered in one slot, see ``_bus``) keeps each event's
own pickle, each after its length: it is made by joining pickles already made, and decoded in
one C-level pass, or one by one when an event of it cannot be decoded, so that only that event
is charged (a chunk cannot be split so: its columns are one pickle).
"""

from __future__ import annotations

import pickle
import struct
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from operator import attrgetter, is_
from typing import Any

from .._errors import HandlerPanic, RemoteError
from .._event import EVENT_SETTERS, Context, Event

__all__ = [
    "FLAG_CLOUDPICKLE", "FLAG_ENVELOPE", "FLAG_OVERFLOW", "FLAG_CHUNK", "FLAG_MIXED", "FLAG_PAGED", "FLAG_REPORT",
    "FLAG_RUN", "encode_run", "run_items", "decode_run",
    "UNDECODABLE", "DECODE_HANDLER",
    "encode_plain", "encode_event", "encode_chunk", "decode_event", "decode_events", "dumps", "portable_exception",
]

FLAG_CLOUDPICKLE = 1 << 0  # written by cloudpickle (pickle.loads still reads it)
FLAG_ENVELOPE = 1 << 1     # payload is (event, ctx, attempts), not a bare Event
FLAG_OVERFLOW = 1 << 2     # payload lives in its own shared-memory block; the slot holds its name
FLAG_CHUNK = 1 << 3        # payload is a chunk of events by column (from subscribe_many), not one
FLAG_MIXED = 1 << 4        # a chunk whose events do not all share one projection object
FLAG_PAGED = 1 << 5        # payload lives in an arena page of the ring; the slot holds its number
FLAG_REPORT = 1 << 6       # a slot flag, not the codec's: a caller waits for this event's every
                           # outcome (``submit``), so a worker reports each one; decoding ignores it
FLAG_RUN = 1 << 7          # payload is a *run*: single events' own pickles, each after its u32
                           # length (consecutive subscribes gathered in one slot, see ``_bus``)
RUN_ITEM = struct.Struct("<I")

PROTOCOL = 5

#: A slot that cannot be decoded becomes a dead letter of this projection (its raw bytes as
#: data), charged to this handler name, in the parent and in workers alike.
UNDECODABLE = "busmp.undecodable"
DECODE_HANDLER = "busmp.codec.decode_event"


#: Buffers at least this big (numpy arrays, ``PickleBuffer``) travel out of band: copied once,
#: straight into shared memory, instead of into the pickle and then into shared memory.
OUT_OF_BAND_MIN = 64 * 1024


def dumps(obj: object, out_of_band: bool = False) -> tuple[bytes, int, list[memoryview]]:
    """Pickle ``obj``: the bytes, ``FLAG_CLOUDPICKLE`` if cloudpickle was needed, and (with
    ``out_of_band``) the large protocol-5 buffers left out of the bytes.

    The first attempt refuses large buffers instead of collecting them, so the common event
    (no large buffer) pays for no collector; one with a large buffer is pickled again.
    """
    try:
        try:
            return pickle.dumps(obj, PROTOCOL, buffer_callback=_in_band_only if out_of_band else None), 0, []
        except _LargeBuffer:
            buffers: list[memoryview] = []
            return pickle.dumps(obj, PROTOCOL, buffer_callback=_collect_into(buffers)), 0, buffers
    except (pickle.PicklingError, TypeError, AttributeError):
        import cloudpickle  # on first need only: a worker may never need it (~30 ms to import)

        buffers = []
        callback = _collect_into(buffers) if out_of_band else None
        return cloudpickle.dumps(obj, PROTOCOL, buffer_callback=callback), FLAG_CLOUDPICKLE, buffers


class _LargeBuffer(Exception):
    """Raised by the first pickling attempt when a buffer should go out of band."""


def _is_large(buffer: pickle.PickleBuffer) -> bool | None:
    """True if ``buffer`` should go out of band; None if it cannot (not contiguous)."""
    try:
        return buffer.raw().nbytes >= OUT_OF_BAND_MIN
    except BufferError:
        return None


def _in_band_only(buffer: pickle.PickleBuffer) -> bool:
    if _is_large(buffer):
        raise _LargeBuffer
    return True


def _collect_into(buffers: list[memoryview]) -> Any:
    def keep_in_band(buffer: pickle.PickleBuffer) -> bool:
        if not _is_large(buffer):
            return True
        buffers.append(buffer.raw())
        return False

    return keep_in_band


def encode_plain(event: Event) -> bytes | None:
    """The pickle of an event with no context, as :func:`encode_event` makes it, in one step;
    None when plain pickle cannot make it alone (a large buffer to leave out of band, an
    object only cloudpickle takes, an error to name): then ``encode_event`` does it."""
    try:
        return pickle.dumps((event.projection, event.data, event.id, event.args), PROTOCOL,
                            buffer_callback=_in_band_only)
    except Exception:
        return None


def encode_event(event: Event, ctx: Context | None = None, attempts: int = 0,
                 out_of_band: bool = True) -> tuple[bytes, int, list[memoryview]]:
    """Encode an event (with its context and prior attempts, when it has them).

    Returns the pickle, its flags, and the large buffers it refers to out of band (empty
    unless ``out_of_band``). The event travels as a plain tuple of its fields: pickling a
    tuple is several times faster than pickling an instance of a class. Raises
    ``TypeError`` naming the event when neither pickler can encode it.
    """
    fields = (event.projection, event.data, event.id, event.args)
    if ctx is None and attempts == 0:
        obj: object = fields
        flags = 0
    else:
        obj, flags = (fields, ctx, attempts), FLAG_ENVELOPE
    try:
        payload, how, buffers = dumps(obj, out_of_band)
    except Exception as exc:
        raise TypeError(
            f"event {event!r} cannot be pickled ({type(exc).__name__}: {exc}); "
            "its data must be picklable to travel through the ring"
        ) from exc
    return payload, flags | how, buffers


def encode_chunk(events: Sequence[Event], ctx: Context | None = None,
                 shared: bool = False) -> tuple[bytes, int, list[memoryview]]:
    """Encode several events as one pickle, by column (see the module docstring): one slot,
    one ``pickle.dumps``, for a run of events that ``subscribe_many`` received together.
    ``shared``: the caller knows that every event carries the same projection object."""
    first: Any = events[0].projection
    projections: list[Any] = []
    mixed = False
    if not shared:
        projections = list(map(_projection_of, events))
        mixed = not all(map(is_, projections, repeat(first)))
    columns = (projections if mixed else first, list(map(_data_of, events)),
               _column(events, _id_of, ""), _column(events, _args_of, None))
    obj: object = columns if ctx is None else (columns, ctx, 0)
    payload, how, buffers = dumps(obj, True)
    flags = how | FLAG_CHUNK | (FLAG_MIXED if mixed else 0) | (FLAG_ENVELOPE if ctx is not None else 0)
    return payload, flags, buffers


_projection_of, _data_of, _id_of, _args_of = map(attrgetter, ("projection", "data", "id", "args"))


def _column(events: Sequence[Event], field: Any, default: object) -> list[Any] | None:
    """The field of every event, or None when every one is the ``default`` object itself."""
    if all(map(is_, map(field, events), repeat(default))):
        return None
    return list(map(field, events))


def decode_event(payload: Any, flags: int, buffers: Sequence[Any] = ()) -> tuple[Event, Context | None, int]:
    """The inverse of :func:`encode_event`: ``(event, ctx, attempts)``."""
    events, ctx, attempts = decode_events(payload, flags, buffers)
    return events[0], ctx, attempts


def encode_run(payloads: Sequence[bytes]) -> bytes:
    """A run (``FLAG_RUN``) of events already encoded one by one (no context, no flags)."""
    return b"".join([part for payload in payloads for part in (RUN_ITEM.pack(len(payload)), payload)])


def run_items(payload: Any) -> list[Any]:
    """The events' own pickles in a run, as views of ``payload``."""
    view, items, offset = memoryview(payload), [], 0
    while offset < len(view):
        (length,) = RUN_ITEM.unpack_from(view, offset)
        offset += RUN_ITEM.size
        items.append(view[offset: offset + length])
        offset += length
    return items


def decode_run(items: Sequence[Any]) -> list[Event]:
    """The events of a run's items (``run_items``), built by column in C-level passes; raises
    if any cannot be decoded (decode them one by one then, to tell which)."""
    if not items:
        return []
    projections, datas, ids, args = zip(*map(pickle.loads, items))
    return _build(projections, list(datas), ids, args)


def decode_events(payload: Any, flags: int, buffers: Sequence[Any] = ()) -> tuple[list[Event], Context | None, int]:
    """What a slot holds, one event, a chunk or a run: ``(events, ctx, attempts)``. An event
    of a run that cannot be decoded reads as a placeholder (projection ``UNDECODABLE``, its
    bytes as data): each event of a run is charged alone, as a slot of its own would be."""
    if flags & FLAG_RUN:
        items = run_items(payload)
        try:
            return decode_run(items), None, 0
        except Exception:
            events: list[Event] = []
            for item in items:
                try:
                    events.append(decode_events(item, 0)[0][0])
                except Exception:
                    events.append(Event(UNDECODABLE, bytes(item)))
            return events, None, 0
    obj = pickle.loads(payload, buffers=buffers)
    ctx, attempts = None, 0
    if flags & FLAG_ENVELOPE:
        obj, ctx, attempts = obj
    if flags & FLAG_CHUNK:
        projection, datas, ids, args = obj
        n = len(datas)
        return _build(projection if flags & FLAG_MIXED else repeat(projection, n), datas,
                      repeat("", n) if ids is None else ids, repeat(None, n) if args is None else args
                      ), ctx, attempts
    projection, data, id_, args = obj
    event = object.__new__(Event)
    _set_projection(event, projection)
    _set_data(event, data)
    _set_id(event, id_)
    _set_args(event, args)
    return [event], ctx, attempts


# A chunk's events are built column by column, each column one C-level pass of a slot setter.
_set_projection, _set_data, _set_id, _set_args = EVENT_SETTERS
_consume: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend


def _build(projections: Iterable[Any], datas: list[Any], ids: Iterable[Any], args: Iterable[Any]) -> list[Event]:
    events = list(map(object.__new__, repeat(Event, len(datas))))
    for set_field, column in zip(EVENT_SETTERS, (projections, datas, ids, args)):
        _consume(map(set_field, events, column))
    return events


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text; it is set as the
    ``__cause__`` of the exception the parent receives, so a printed traceback shows both."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class _WithTraceback:
    """An exception on its way home with its traceback text (which pickle would drop)."""

    def __init__(self, exc: BaseException, text: str, where: str) -> None:
        self.exc, self.text, self.where = exc, text, where

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self.exc, self.text, self.where)


def _rebuild(exc: BaseException, text: str, where: str) -> BaseException:
    exc.__cause__ = RemoteTraceback(f'\n"""\n{text}"""')
    if hasattr(exc, "add_note"):  # Python 3.11+
        exc.add_note(where)
    return exc


def portable_exception(exc: BaseException, where: str = "") -> Any:
    """An exception that survives the trip from a worker to the parent, with its traceback.

    ``Exception`` keeps its type when it round-trips through pickle, and arrives with the
    remote traceback as its ``__cause__`` (and ``where`` as a note); otherwise it becomes a
    :class:`RemoteError` with the type name, message and traceback text. A ``BaseException``
    that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``) becomes
    :class:`HandlerPanic`.
    """
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if not isinstance(exc, Exception):
        return HandlerPanic(name, str(exc), tb)
    try:
        pickle.loads(dumps(exc)[0])
    except Exception:
        return RemoteError(name, str(exc), tb)
    return _WithTraceback(exc, tb, where) if where else exc
