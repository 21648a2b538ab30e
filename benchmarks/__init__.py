"""busmp benchmark suite: busmp against its peers, measured in the same run, interleaved.

Run from the repository root::

    python -m benchmarks [--quick] [--only NAME[,NAME]] [--repeat N]

Each workload is a module with ``NAME``, ``TITLE``, ``KIND`` ("rate" or "latency"), ``UNIT``,
``WORK`` (units of work per run, for rates), ``BASELINE`` (a contender name), ``NOTES`` and
``contenders()`` returning ``(name, callable[, note])`` tuples. A callable performs one run and
returns the elapsed seconds (rate workloads) or a list of per-sample seconds (latency); it does
its own set-up and tear-down (always in ``try/finally``) and times only the measured part.
A callable raising ``_common.Unavailable`` is reported as "n/a (not installed)"; any other
exception as "n/a (error: ...)", and the run goes on. Every repetition runs each contender once,
starting one contender further along each time, so none always runs first.

Results go to ``benchmarks/results/``: ``results.md`` (tables), ``results.json`` (raw timings),
and ``results.png`` when matplotlib (the optional ``bench`` extra) is importable.
"""

from __future__ import annotations

import importlib
from types import ModuleType

WORKLOADS = ("subscribe", "subscribe_publish", "streaming_sync", "small_events", "streaming", "cpu_bound",
             "numpy_payload", "latency", "submit", "startup")


def load_workload(name: str) -> ModuleType:
    if name not in WORKLOADS:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")
