"""Routing: the :class:`Dispatcher` table and the per-handler middleware chains.

A :class:`Routes` snapshot freezes what one ``publish()`` dispatches with: the per-event
handlers (wrapped in their middleware chains), the batch handlers and their sizes. Workers
receive the same snapshot, pickled with cloudpickle, whenever its version changes.
"""

from __future__ import annotations

import enum
import inspect
import pickle
import threading
import types
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._event import Context, Event, Result

__all__ = [
    "Dispatcher", "Handler", "BatchHandler", "Middleware", "BatchRoute", "Routes", "handler_name",
    "check_projection",
]

Handler = Callable[[Context, Event], "Result | None"]
BatchHandler = Callable[[Context, "list[Event]"], "Sequence[Result] | None"]
Middleware = Callable[[Handler], Handler]
F = TypeVar("F", bound=Callable[..., Any])


def handler_name(fn: object) -> str:
    """``module.qualname`` of a handler, for dead letters and logs."""
    module = getattr(fn, "__module__", None) or ""
    qual = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    return f"{module}.{qual}" if module else str(qual)


def check_projection(projection: object, what: str = "projection") -> None:
    """A projection must be hashable, and still equal to itself after a trip through pickle."""
    try:
        hash(projection)
    except TypeError:
        raise TypeError(
            f"{what} {projection!r} is unhashable ({type(projection).__name__}); "
            "use a hashable key such as a str, int, tuple, enum member or class"
        ) from None
    if not survives_pickling(projection):
        raise TypeError(
            f"{what} {projection!r} is compared by identity and is a different object once "
            "pickled into the ring, so no handler would ever match it; use a value such as a "
            "str, int, tuple, enum member or class (e.g. USER_CREATED = 'user_created')"
        )


_BY_REFERENCE = (type, enum.Enum, types.FunctionType, types.BuiltinFunctionType, types.ModuleType)


def survives_pickling(projection: object) -> bool:
    """False for keys like ``object()`` that equal only themselves and pickle as a copy."""
    if type(projection).__eq__ is not object.__eq__ or projection is None:
        return True  # value equality (str, int, tuple, dataclasses...): a copy still matches
    if isinstance(projection, _BY_REFERENCE):
        return True  # pickled by reference: unpickling returns the very same object
    try:
        return pickle.loads(pickle.dumps(projection)) is projection
    except Exception:
        return False


def _check_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__} {fn!r}")


class Dispatcher:
    """The routing table: projection -> handlers, in registration order."""

    def __init__(self) -> None:
        self._table: dict[Hashable, tuple[Handler, ...]] = {}
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change so stores know to re-ship handlers

    def register(self, projection: Hashable, *handlers: Handler) -> None:
        check_projection(projection)
        for h in handlers:
            _check_callable(h, "handler")
        with self._lock:
            self._table[projection] = self._table.get(projection, ()) + tuple(handlers)
            self.version += 1

    def on(self, projection: Hashable) -> Callable[[F], F]:
        check_projection(projection)

        def decorate(fn: F) -> F:
            self.register(projection, fn)
            return fn

        return decorate

    def handlers(self, projection: Hashable) -> tuple[Handler, ...]:
        check_projection(projection)
        return self._table.get(projection, ())

    def snapshot(self) -> dict[Hashable, tuple[Handler, ...]]:
        with self._lock:
            return dict(self._table)

    def __repr__(self) -> str:
        return f"Dispatcher({len(self._table)} projections)"


@dataclass(frozen=True)
class BatchRoute:
    size: int
    handler: BatchHandler
    name: str


@dataclass
class Routes:
    """What a publish dispatches with; built in the parent, shipped to workers."""

    handlers: dict[Hashable, tuple[Handler, ...]] = field(default_factory=dict)
    batches: dict[Hashable, tuple[BatchRoute, ...]] = field(default_factory=dict)
    middleware: tuple[Middleware, ...] = ()
    _chains: dict[Hashable, tuple[tuple[Handler, str], ...]] = field(default_factory=dict, repr=False, compare=False)
    # The planner's caches, built in the parent on first use and never shipped (see
    # ``__getstate__``): the hashes of the projections that have per-event handlers, as a set
    # and as a numpy array (typed ``Any``: this module must not import numpy, workers load it).
    hash_set: frozenset[int] | None = field(default=None, init=False, repr=False, compare=False)
    hash_array: Any = field(default=None, init=False, repr=False, compare=False)
    # The projections with an async handler (``async_projections``), and the hashes of those
    # whose handlers are all plain functions (``lane_hashes``), likewise the parent's.
    async_set: frozenset[Hashable] | None = field(default=None, init=False, repr=False, compare=False)
    lane_set: frozenset[int] | None = field(default=None, init=False, repr=False, compare=False)

    def handler_hashes(self) -> frozenset[int]:
        """Hashes of the projections with per-event handlers (what the planner routes on)."""
        if self.hash_set is None:
            self.hash_set = frozenset(hash(p) for p, handlers in self.handlers.items() if handlers)
        return self.hash_set

    def chains(self, projection: Hashable) -> tuple[tuple[Handler, str], ...]:
        """Each handler of ``projection`` inside its own middleware chain, with its name."""
        chains = self._chains.get(projection)
        if chains is None:
            chains = tuple((wrap(h, self.middleware), handler_name(h)) for h in self.handlers.get(projection, ()))
            self._chains[projection] = chains
        return chains

    def __getstate__(self) -> dict[str, Any]:
        # Only what a worker needs: chains are rebuilt where they run, and the planner's
        # caches (numpy arrays) stay in the parent, so a worker never imports numpy for them.
        return {"handlers": self.handlers, "batches": self.batches, "middleware": self.middleware, "_chains": {},
                "hash_set": None, "hash_array": None, "async_set": None, "lane_set": None}

    def lane_hashes(self) -> frozenset[int]:
        """Hashes of the projections whose per-event handlers are all plain functions: what a
        small publish may hand to an awake worker as a lane job (``_workers.pool``), where an
        awaitable is awaited in place rather than overlapped."""
        if self.lane_set is None:
            asyncs = async_projections(self)
            self.lane_set = frozenset(hash(p) for p, hs in self.handlers.items() if hs and p not in asyncs)
        return self.lane_set


def async_projections(routes: Routes) -> frozenset[Hashable]:
    """Projections with an ``async def`` handler or batch handler (cached on the snapshot).
    A middleware that makes a handler async is seen only when it runs (see ``_pipeline``)."""
    if routes.async_set is None:
        routes.async_set = frozenset(
            [p for p, hs in routes.handlers.items() if any(map(_is_async, hs))]
            + [p for p, rs in routes.batches.items() if any(_is_async(r.handler) for r in rs)])
    return routes.async_set


def _is_async(fn: object) -> bool:
    # an instance whose __call__ is async: callable() cannot tell
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))  # noqa: B004


def wrap(handler: Handler, middleware: Sequence[Middleware]) -> Handler:
    """Apply middleware so that the first registered is the outermost."""
    for mw in reversed(middleware):
        handler = mw(handler)
    return handler
