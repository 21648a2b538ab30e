"""ray_backend: busmp's Ray backend beside local workers and plain Ray, on one local cluster.

Run alone, from the repository root (needs ``pip install -e '.[ray]'``)::

    python -m benchmarks.ray_backend [--repeat N]

Two workloads, each with 2 workers / actors / Ray processes on a local cluster started once
with ``ray.init(num_cpus=2)``:

* small events: 200k small dict events, no-op handler, end to end (``subscribe_many`` +
  ``publish`` + ``flush``), beside plain Ray with one ``remote`` call per event (timed on a
  subset, scaled) and ``ray.util.multiprocessing.Pool.imap_unordered`` in chunks of 256;
* cpu bound: 400 calls of ~1 ms pure-Python CPU, beside a serial loop, one Ray task per
  call and the Ray pool in chunks of 4.

Store, pool and actor start-up and a warm-up round are excluded for every contender. The
figures are printed (median, min and max over the repetitions, and the median of the ratios
to the baseline, each taken within one repetition: on a shared machine the load changes
between repetitions more than between contenders of one); nothing under
``benchmarks/results/`` is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from . import _common, _handlers, cpu_bound, small_events
from ._runner import fmt_num, median

WORKERS = 2
N = small_events.N
PER_CALL_SUBSET = 2_000
CALLS = cpu_bound.CALLS
TARGET_SMALL = 10.0  # busmp's Ray backend against one remote call per event
TARGET_CPU = 1.5     # busmp's Ray backend (2 actors) against the serial loop


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise _common.Unavailable("ray") from None
    return ray


# -- small events ------------------------------------------------------------------------
def busmp_ray_small() -> float:
    return _common.time_busmp_round("p", _handlers.noop_handler, small_events.items(), [{"i": -1}],
                                    buffer_size=1 << 18, workers=WORKERS, backend="ray")


def busmp_local_small() -> float:
    return _common.time_busmp_round("p", _handlers.noop_handler, small_events.items(), [{"i": -1}],
                                    buffer_size=1 << 18, workers=WORKERS)


def ray_call_per_event() -> float:
    ray = _ray()
    noop = ray.remote(_handlers.noop)
    ray.get([noop.remote(None) for _ in range(4 * WORKERS)])  # warm-up: the worker processes run
    data = small_events.items()[:PER_CALL_SUBSET]
    t0 = time.perf_counter()
    ray.get([noop.remote(item) for item in data])
    return (time.perf_counter() - t0) * (N / PER_CALL_SUBSET)


def ray_pool(function: Callable[[Any], Any], items: list[Any], chunksize: int) -> float:
    from ray.util.multiprocessing import Pool

    pool = Pool(processes=WORKERS)
    try:
        list(pool.imap_unordered(function, items[: 4 * WORKERS], chunksize=1))  # warm-up
        t0 = time.perf_counter()
        done = sum(1 for _ in pool.imap_unordered(function, items, chunksize=chunksize))
        elapsed = time.perf_counter() - t0
    finally:
        pool.terminate()
    if done != len(items):
        raise _common.Mismatch(f"{done} of {len(items)} results")
    return elapsed


def ray_pool_small() -> float:
    return ray_pool(_handlers.noop, small_events.items(), small_events.CHUNK)


# -- cpu bound ---------------------------------------------------------------------------
def busmp_ray_cpu() -> float:
    return _common.time_busmp_round("cpu", _handlers.burn_handler, [cpu_bound.LOOPS] * CALLS, [1],
                                    workers=WORKERS, backend="ray")


def busmp_local_cpu() -> float:
    return _common.time_busmp_round("cpu", _handlers.burn_handler, [cpu_bound.LOOPS] * CALLS, [1],
                                    workers=WORKERS)


def ray_task_per_call() -> float:
    ray = _ray()
    burn = ray.remote(_handlers.burn)
    ray.get([burn.remote(1) for _ in range(4 * WORKERS)])
    t0 = time.perf_counter()
    ray.get([burn.remote(cpu_bound.LOOPS) for _ in range(CALLS)])
    return time.perf_counter() - t0


def ray_pool_cpu() -> float:
    return ray_pool(_handlers.burn, [cpu_bound.LOOPS] * CALLS, 4)


WORKLOADS: list[tuple[str, str, int, str, list[tuple[str, Callable[[], float]]]]] = [
    ("small events", "events/s", N, "Ray: one remote call per event", [
        ("busmp backend='ray' (2 actors)", busmp_ray_small),
        ("busmp local workers (2 processes)", busmp_local_small),
        ("Ray: one remote call per event", ray_call_per_event),
        (f"Ray Pool.imap_unordered(chunksize={small_events.CHUNK})", ray_pool_small),
    ]),
    ("cpu bound", "calls/s", CALLS, "serial loop (parent)", [
        ("busmp backend='ray' (2 actors)", busmp_ray_cpu),
        ("busmp local workers (2 processes)", busmp_local_cpu),
        ("serial loop (parent)", cpu_bound.serial),
        ("Ray: one task per call", ray_task_per_call),
        ("Ray Pool.imap_unordered(chunksize=4)", ray_pool_cpu),
    ]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ray_backend", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3, metavar="N", help="repetitions per contender (default 3)")
    args = parser.parse_args(argv)
    try:
        ray = _ray()
    except _common.Unavailable:
        print("Ray is not installed: pip install -e '.[ray]'", file=sys.stderr)
        return 0
    cpu_bound.calibrate()
    ray.init(num_cpus=WORKERS, include_dashboard=False, configure_logging=False)
    try:
        for title, unit, work, baseline, contenders in WORKLOADS:
            rates: dict[str, list[float]] = {name: [] for name, _ in contenders}
            for rep in range(1, args.repeat + 1):
                for name, run in contenders:  # interleaved: each repetition runs every contender
                    seconds = run()
                    rates[name].append(work / seconds)
                    print(f"[{title}] rep {rep}/{args.repeat} {name}: {seconds:.3f} s = "
                          f"{fmt_num(work / seconds)} {unit}", file=sys.stderr, flush=True)
            base = rates[baseline]
            print(f"\n### {title} ({work:,} per run, {args.repeat} runs, 2 CPUs)\n")
            print(f"| contender | {unit} (median) | min | max | vs {baseline} (median of per-run ratios) |")
            print("|---|---:|---:|---:|---:|")
            for name, _ in contenders:
                values = rates[name]
                ratio = median([value / b for value, b in zip(values, base)])
                print(f"| {name} | {fmt_num(median(values))} | {fmt_num(min(values))} | "
                      f"{fmt_num(max(values))} | {ratio:.2f}x |")
        print(f"\ntargets: small events >= {TARGET_SMALL:.0f}x one call per event; "
              f"cpu bound >= {TARGET_CPU}x serial with 2 actors")
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
