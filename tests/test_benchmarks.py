"""The benchmark runner's own duties: a fair order of contenders, and no unchecked result."""

from __future__ import annotations

import types

import pytest

from benchmarks import _common, _runner


def recording_workload(order: list[str]) -> types.ModuleType:
    wl = types.ModuleType("fake_workload")
    wl.NAME, wl.KIND, wl.UNIT, wl.WORK = "fake", "rate", "ops/s", 1

    def contender(name: str):
        def run() -> float:
            order.append(name)
            return 1.0

        return run

    wl.contenders = lambda: [(name, contender(name)) for name in "abc"]
    return wl


def test_each_repetition_starts_with_the_next_contender():
    order: list[str] = []
    result = _runner.run_workload(recording_workload(order), reps=4, timeout=30)
    assert order == list("abc" "bca" "cab" "abc")
    assert [c.seconds for c in result.contenders] == [[1.0] * 4] * 3  # results stay with their contender


def test_a_store_whose_count_cannot_be_read_fails_the_run_instead_of_skipping_the_check():
    class Broken:
        def metrics(self):
            raise RuntimeError("store is gone")

    with pytest.raises(RuntimeError, match="store is gone"):
        _common.busmp_processed(Broken())
    with pytest.raises(RuntimeError, match="store is gone"):
        _common.check_busmp_processed(Broken(), 0, 10)


def test_a_count_that_is_off_is_a_mismatch():
    class Counted:
        def metrics(self):
            return types.SimpleNamespace(processed=7)

    _common.check_busmp_processed(Counted(), 2, 5)
    with pytest.raises(_common.Mismatch, match="handled 5 of 6"):
        _common.check_busmp_processed(Counted(), 2, 6)
