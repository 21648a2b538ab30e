"""Specification of the Dispatcher routing table."""

from __future__ import annotations

import dataclasses
import enum

import pytest

from busmp import Dispatcher, Event, EventStore


def h1(ctx, ev):
    return None


def h2(ctx, ev):
    return None


def h3(ctx, ev):
    return None


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class HouseWasSold:
    pass


def test_new_dispatcher_has_no_handlers():
    assert Dispatcher().handlers("anything") == ()


def test_register_appends_handlers_in_call_order():
    d = Dispatcher()
    d.register("p", h1, h2, h3)
    assert d.handlers("p") == (h1, h2, h3)


def test_register_accumulates_across_calls():
    d = Dispatcher()
    d.register("p", h2)
    d.register("p", h1)
    d.register("p", h2, h3)
    assert d.handlers("p") == (h2, h1, h2, h3)


def test_register_keeps_projections_apart():
    d = Dispatcher()
    d.register("a", h1)
    d.register("b", h2)
    assert d.handlers("a") == (h1,)
    assert d.handlers("b") == (h2,)


def test_handlers_returns_a_tuple():
    d = Dispatcher()
    d.register("p", h1)
    assert isinstance(d.handlers("p"), tuple)
    assert isinstance(d.handlers("unknown"), tuple)


def test_on_decorator_registers_and_returns_the_function_unchanged():
    d = Dispatcher()

    def handler(ctx, ev):
        return None

    decorated = d.on("p")(handler)
    assert decorated is handler
    assert d.handlers("p") == (handler,)


def test_on_decorator_syntax_appends_after_earlier_registrations():
    d = Dispatcher()
    d.register("p", h1)

    @d.on("p")
    def handler(ctx, ev):
        return None

    assert callable(handler)
    assert d.handlers("p") == (h1, handler)


def test_register_unhashable_projection_raises_type_error_naming_the_problem():
    d = Dispatcher()
    with pytest.raises(TypeError, match=r"(?i)unhashable"):
        d.register(["a", "list"], h1)


def test_on_with_unhashable_projection_raises_type_error():
    d = Dispatcher()
    with pytest.raises(TypeError, match=r"(?i)unhashable"):
        d.on({"a": 1})(h1)


def test_register_non_callable_handler_raises_type_error_naming_the_problem():
    d = Dispatcher()
    with pytest.raises(TypeError, match=r"(?i)callable"):
        d.register("p", "not a function")


def test_register_with_a_non_callable_handler_registers_nothing():
    d = Dispatcher()
    with pytest.raises(TypeError):
        d.register("p", h1, 42)
    assert d.handlers("p") == ()


@pytest.mark.parametrize(
    "projection",
    ["user.created", 7, ("order", 42), HouseWasSold, Color.RED],
    ids=["str", "int", "tuple", "class", "enum-member"],
)
def test_any_hashable_projection_can_be_registered(projection):
    d = Dispatcher()
    d.register(projection, h1)
    assert d.handlers(projection) == (h1,)


def test_equal_looking_projections_of_different_kind_are_different_keys():
    d = Dispatcher()
    d.register("1", h1)
    d.register(1, h2)
    d.register(Color.RED, h3)
    assert d.handlers("1") == (h1,)
    assert d.handlers(1) == (h2,)
    assert d.handlers(Color.RED) == (h3,)
    assert d.handlers(Color.BLUE) == ()


@pytest.mark.parametrize(
    "projection",
    ["user.created", 7, ("order", 42), HouseWasSold, Color.RED],
    ids=["str", "int", "tuple", "class", "enum-member"],
)
def test_store_routes_events_by_each_kind_of_projection(projection):
    d = Dispatcher()
    seen = []
    d.register(projection, lambda ctx, ev: seen.append(ev.data))
    d.register("other", lambda ctx, ev: seen.append("wrong"))
    with EventStore(d, 8) as store:
        store.subscribe(Event(projection, data="hit"))
        store.publish()
    assert seen == ["hit"]


def test_store_routes_by_a_class_and_an_enum_defined_inside_a_function():
    class LocalEvent:
        pass

    class LocalKind(enum.Enum):
        A = "a"

    d = Dispatcher()
    seen = []
    d.register(LocalEvent, lambda ctx, ev: seen.append("class"))
    d.register(LocalKind.A, lambda ctx, ev: seen.append("enum"))
    with EventStore(d, 8) as store:
        store.subscribe(Event(LocalEvent))
        store.subscribe(Event(LocalKind.A))
        store.publish()
    assert seen == ["class", "enum"]


def test_store_routes_by_a_value_equal_instance_projection():
    @dataclasses.dataclass(frozen=True)
    class Topic:
        name: str

    d = Dispatcher()
    seen = []
    d.register(Topic("orders"), lambda ctx, ev: seen.append(ev.data))
    with EventStore(d, 8) as store:
        store.subscribe(Event(Topic("orders"), 1))
        store.subscribe(Event(Topic("invoices"), 2))
        store.publish()
    assert seen == [1]


def test_sentinel_object_projection_is_routed_or_rejected_never_silently_lost():
    """``USER_CREATED = object()`` is a hashable key, the common Python sentinel idiom. An event
    with it must reach the handler registered for it, or subscribe must refuse it with
    TypeError; being accepted, counted and then routed nowhere loses the event silently."""
    user_created = object()
    d = Dispatcher()
    seen = []
    try:
        d.register(user_created, lambda ctx, ev: seen.append(ev.data))
    except TypeError as exc:  # refused as early as possible, with the fix in the message
        assert "identity" in str(exc)
        d.register("other", lambda ctx, ev: None)
    with EventStore(d, 8) as store:
        try:
            store.subscribe(Event(user_created, 1))
        except TypeError:
            assert store.metrics() == (0, 0, 0)
            return
        store.publish()
    assert seen == [1]
