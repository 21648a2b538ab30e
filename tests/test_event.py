"""Specification of the values that travel through the bus: Event, Result and Context."""

from __future__ import annotations

import dataclasses
import pickle
import time

import pytest

from busmp import Context, Event, Result

# --------------------------------------------------------------------------- Event


def test_event_defaults_are_none_data_empty_id_and_no_args():
    event = Event("user.created")
    assert event.projection == "user.created"
    assert event.data is None
    assert event.id == ""
    assert event.args is None


def test_event_takes_all_fields_by_keyword():
    event = Event(projection="p", data={"x": 1}, id="ev-1", args={"legacy": True})
    assert (event.projection, event.data, event.id, event.args) == ("p", {"x": 1}, "ev-1", {"legacy": True})


def test_event_is_constructed_like_its_dataclass_fields_say():
    assert [f.name for f in dataclasses.fields(Event)] == ["projection", "data", "id", "args"]
    assert Event("p", 1, "i", {"a": 1}) == Event(projection="p", data=1, id="i", args={"a": 1})
    assert dataclasses.replace(Event("p", 1), id="x") == Event("p", 1, "x")
    with pytest.raises(TypeError):
        Event()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Event("p", nonsense=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Event("p", 1, "i", None, "extra")  # type: ignore[call-arg]


def test_event_is_frozen():
    event = Event("p", data=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = 2  # type: ignore[misc]
    assert event.data == 1


def test_event_uses_slots_and_has_no_instance_dict():
    assert not hasattr(Event("p"), "__dict__")


def test_events_compare_by_value():
    assert Event("p", 1, "a") == Event("p", 1, "a")
    assert Event("p", 1, "a") != Event("p", 1, "b")


def test_event_pickle_roundtrip_is_equal():
    event = Event(("order", 7), data=[1, 2], id="ev-9", args={"k": "v"})
    assert pickle.loads(pickle.dumps(event)) == event


# --------------------------------------------------------------------------- Result


def test_result_defaults_are_empty_message_and_none_value():
    result = Result()
    assert result.message == ""
    assert result.value is None


def test_result_is_frozen_and_compares_by_value():
    result = Result("ok", 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.message = "changed"  # type: ignore[misc]
    assert result == Result(message="ok", value=3)
    assert result != Result("ok", 4)


# --------------------------------------------------------------------------- Context values


def test_context_value_returns_stored_value_or_default():
    ctx = Context({"user": "ann"})
    assert ctx.value("user") == "ann"
    assert ctx.value("missing") is None
    assert ctx.value("missing", "fallback") == "fallback"


def test_with_value_returns_a_derived_copy_and_leaves_the_original_unchanged():
    original = Context({"a": 1})
    derived = original.with_value("b", 2)
    assert derived is not original
    assert derived.value("a") == 1
    assert derived.value("b") == 2
    assert original.value("b") is None


def test_with_value_overrides_an_existing_key_only_in_the_copy():
    original = Context({"a": 1})
    derived = original.with_value("a", 99)
    assert derived.value("a") == 99
    assert original.value("a") == 1


def test_context_does_not_alias_the_mapping_it_was_built_from():
    values = {"a": 1}
    ctx = Context(values)
    values["a"] = 2
    assert ctx.value("a") == 1


def test_context_deadline_cannot_be_assigned():
    ctx = Context(deadline=123.0)
    with pytest.raises((AttributeError, TypeError)):
        ctx.deadline = 5.0  # type: ignore[misc]
    assert ctx.deadline == 123.0


# --------------------------------------------------------------------------- Context deadlines


def test_context_without_deadline_never_expires():
    ctx = Context()
    assert ctx.deadline is None
    assert ctx.remaining() is None
    assert ctx.expired is False


def test_with_timeout_sets_an_absolute_wall_clock_deadline():
    before = time.time()
    ctx = Context().with_timeout(10)
    after = time.time()
    assert before + 10 <= ctx.deadline <= after + 10


def test_with_deadline_returns_a_copy_and_leaves_the_original_without_deadline():
    original = Context({"k": "v"})
    derived = original.with_deadline(time.time() + 60)
    assert original.deadline is None
    assert derived.deadline is not None
    assert derived.value("k") == "v"


def test_with_deadline_keeps_the_earlier_existing_deadline():
    now = time.time()
    ctx = Context(deadline=now + 5)
    assert ctx.with_deadline(now + 100).deadline == pytest.approx(now + 5)


def test_with_deadline_takes_an_earlier_new_deadline():
    now = time.time()
    ctx = Context(deadline=now + 100)
    assert ctx.with_deadline(now + 5).deadline == pytest.approx(now + 5)


def test_with_timeout_never_extends_an_earlier_deadline():
    now = time.time()
    ctx = Context(deadline=now + 1).with_timeout(3600)
    assert ctx.deadline == pytest.approx(now + 1)


def test_with_value_keeps_the_deadline():
    ctx = Context(deadline=1234.5).with_value("a", 1)
    assert ctx.deadline == 1234.5


def test_remaining_counts_down_to_the_deadline():
    ctx = Context().with_timeout(10)
    remaining = ctx.remaining()
    assert remaining is not None
    assert 0 < remaining <= 10


def test_context_past_its_deadline_is_expired_with_non_positive_remaining():
    ctx = Context(deadline=time.time() - 1)
    assert ctx.expired is True
    assert ctx.remaining() <= 0


def test_context_before_its_deadline_is_not_expired():
    assert Context().with_timeout(60).expired is False


# --------------------------------------------------------------------------- pickling and emit


def test_context_pickle_roundtrip_is_equal_and_keeps_values_and_deadline():
    ctx = Context({"user": "ann", "n": 3}, deadline=time.time() + 30)
    copy = pickle.loads(pickle.dumps(ctx))
    assert copy == ctx
    assert copy.value("user") == "ann"
    assert copy.value("n") == 3
    assert copy.deadline == ctx.deadline


def test_context_pickle_roundtrip_of_empty_context_is_equal():
    assert pickle.loads(pickle.dumps(Context())) == Context()


def test_emit_outside_a_handler_raises_runtime_error():
    with pytest.raises(RuntimeError):
        Context().emit(Event("follow-up"))
