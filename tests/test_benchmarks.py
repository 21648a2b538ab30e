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


def test_a_merged_run_replaces_only_its_own_workloads_rows(tmp_path):
    from benchmarks import load_workload

    def result(name: str, seconds: float) -> _runner.WorkloadResult:
        res = _runner.WorkloadResult(module=load_workload(name))
        res.contenders = [_runner.Contender(name="busmp x", fn=lambda: None, seconds=[seconds, seconds])]
        return res

    first = {"date": "d1", "git": "aaa", "repetitions": 2, "quick": False, "python": "3", "cpus": 2,
             "platform": "p", "start_method": "fork", "numpy": "n", "busmp": "b", "busmp_options": {}}
    _runner.write_results(tmp_path, first, [result("subscribe", 1.0), result("startup", 2.0)], plot=False)
    later = {**first, "date": "d2", "git": "bbb"}
    meta, merged = _runner.merge_results(*_runner.load_results(tmp_path), later, [result("subscribe", 4.0)])
    _runner.write_results(tmp_path, meta, merged, plot=False)

    meta, results = _runner.load_results(tmp_path)
    assert [r.name for r in results] == ["subscribe", "startup"]
    assert [r.contenders[0].seconds for r in results] == [[4.0, 4.0], [2.0, 2.0]]
    assert (meta["date"], meta["git"]) == ("d1", "aaa")
    assert [(run["git"], run["workloads"]) for run in meta["merged"]] == [("bbb", ["subscribe"])]
    assert "rows of subscribe from a later run (d2, git bbb" in (tmp_path / "results.md").read_text()

    latest = {**first, "date": "d3", "git": "ccc"}
    meta, merged = _runner.merge_results(*_runner.load_results(tmp_path), latest,
                                         [result("subscribe", 5.0), result("startup", 6.0)])
    assert [(run["git"], run["workloads"]) for run in meta["merged"]] == [("ccc", ["subscribe", "startup"])]
    assert [r.contenders[0].seconds for r in merged] == [[5.0, 5.0], [6.0, 6.0]]
