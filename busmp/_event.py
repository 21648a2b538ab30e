"""The values that travel through the bus: :class:`Event`, :class:`Result`, :class:`Context`.

``Context.emit`` finds the store that runs the current handler through a context variable
that the pipeline sets around every handler call, in the parent and in workers alike.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["Event", "Result", "Context", "current_emitter", "EVENT_SETTERS"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event: ``projection`` routes it to handlers, ``data`` is its payload."""

    projection: Hashable
    data: Any = None
    id: str = ""
    args: Mapping[str, Any] | None = None

    def __init__(self, projection: Hashable, data: Any = None, id: str = "",
                 args: Mapping[str, Any] | None = None) -> None:
        # What the dataclass would generate, minus a generic object.__setattr__ lookup per
        # field: the slots' own setters make constructing an event ~1.6x faster.
        _set_projection(self, projection)
        _set_data(self, data)
        _set_id(self, id)
        _set_args(self, args)

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional reconstruction: several times faster than dataclass's slot-state pickling.
        return (Event, (self.projection, self.data, self.id, self.args))


#: The setters of Event's slots, in field order (frozen: nothing else may call them).
EVENT_SETTERS = tuple(Event.__dict__[name].__set__ for name in ("projection", "data", "id", "args"))
_set_projection, _set_data, _set_id, _set_args = EVENT_SETTERS


@dataclass(frozen=True, slots=True)
class Result:
    """What a handler returns; ``None`` from a handler means ``Result()``."""

    message: str = ""
    value: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (Result, (self.message, self.value))


Emitter = Callable[[Event, "Context"], None]

#: Set by the pipeline while a handler runs; ``Context.emit`` sends follow-ups through it.
current_emitter: contextvars.ContextVar[Emitter | None] = contextvars.ContextVar(
    "busmp_emitter", default=None
)

_EMPTY: Mapping[Any, Any] = MappingProxyType({})


class Context:
    """An immutable, picklable carrier of values and a wall-clock deadline."""

    __slots__ = ("_values", "_deadline")

    def __init__(self, values: Mapping[Any, Any] | None = None, deadline: float | None = None) -> None:
        if deadline is not None and not isinstance(deadline, (int, float)):
            raise TypeError(f"deadline must be time.time() seconds (float) or None, not {type(deadline).__name__}")
        self._values: Mapping[Any, Any] = MappingProxyType(dict(values)) if values else _EMPTY
        self._deadline = None if deadline is None else float(deadline)

    # -- values -----------------------------------------------------------------
    def value(self, key: Any, default: Any = None) -> Any:
        return self._values.get(key, default)

    def with_value(self, key: Any, value: Any) -> Context:
        return Context({**self._values, key: value}, self._deadline)

    # -- deadline ---------------------------------------------------------------
    @property
    def deadline(self) -> float | None:
        return self._deadline

    def with_deadline(self, t: float) -> Context:
        """A copy whose deadline is ``t``, unless the current deadline is earlier."""
        if not isinstance(t, (int, float)):
            raise TypeError(f"with_deadline() takes time.time() seconds, not {type(t).__name__}")
        earliest = t if self._deadline is None else min(self._deadline, float(t))
        return Context(self._values, earliest)

    def with_timeout(self, seconds: float) -> Context:
        return self.with_deadline(time.time() + seconds)

    def remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.time()

    @property
    def expired(self) -> bool:
        return self._deadline is not None and time.time() >= self._deadline

    # -- follow-ups -------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """Subscribe a follow-up event to the store running the current handler."""
        emitter = current_emitter.get()
        if emitter is None:
            raise RuntimeError(
                "Context.emit() works only inside a handler run by an EventStore; "
                "outside one, call store.subscribe(event) instead"
            )
        if not isinstance(event, Event):
            raise TypeError(f"Context.emit() takes an Event, not {type(event).__name__}")
        emitter(event, self)

    # -- plumbing ---------------------------------------------------------------
    def __reduce__(self) -> tuple[Any, ...]:
        return (Context, (dict(self._values), self._deadline))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return dict(self._values) == dict(other._values) and self._deadline == other._deadline

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Context(values={dict(self._values)!r}, deadline={self._deadline!r})"


BACKGROUND = Context()
