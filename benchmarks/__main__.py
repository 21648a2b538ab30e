"""Command line: ``python -m benchmarks [--quick] [--only NAME] [--repeat N]``."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import WORKLOADS, _common, _runner, load_workload

ROOT = Path(__file__).resolve().parent.parent


def _parse_opt(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value: object = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


def _shown(merge: bool, earlier: tuple[dict[str, Any], list[_runner.WorkloadResult]], meta: dict[str, Any],
           results: list[_runner.WorkloadResult]) -> tuple[dict[str, Any], list[_runner.WorkloadResult]]:
    """What to write: this run's results, or with ``--merge`` the earlier ones with this run's in place."""
    return _runner.merge_results(*earlier, meta, results) if merge else (meta, results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="2 repetitions instead of 5")
    p.add_argument("--only", action="append", metavar="NAME",
                   help=f"run only these workloads (repeatable or comma-separated): {', '.join(WORKLOADS)}")
    p.add_argument("--repeat", type=int, metavar="N", help="repetitions per contender (default 5, --quick 2)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="limit for one contender run; past it the run is reported as an error (default 60)")
    p.add_argument("--busmp-opt", action="append", default=[], type=_parse_opt, metavar="KEY=VALUE",
                   help="extra keyword option for every busmp EventStore (value as a Python literal)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output directory")
    p.add_argument("--merge", action="store_true",
                   help="keep the other workloads' results already in --out and replace only the ones "
                        "run now (for an --only run; without it the results written are this run's alone)")
    p.add_argument("--list", action="store_true", help="list the workloads and exit")
    p.add_argument("--watch-hz", type=float, metavar="HZ",
                   help="run a reader process beside the workloads that polls busmp.read_stats of every "
                        "live store HZ times a second (what `python -m busmp top` does), to measure what "
                        "being watched costs")
    args = p.parse_args(argv)

    if args.list:
        for name in WORKLOADS:
            wl = load_workload(name)
            print(f"{name:18} {wl.TITLE}")
        return 0

    names = list(WORKLOADS)
    if args.only:
        names = [n.strip() for chunk in args.only for n in chunk.split(",") if n.strip()]
        unknown = [n for n in names if n not in WORKLOADS]
        if unknown:
            p.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if args.repeat is None:
        args.repeat = 2 if args.quick else 5
    if args.repeat < 1:
        p.error("--repeat must be >= 1")
    _common.BUSMP_OPTIONS.update(dict(args.busmp_opt))

    earlier = _runner.load_results(args.out) if args.merge else ({}, [])
    meta = _runner.collect_meta(args, ROOT)
    watcher = None
    if args.watch_hz:
        meta["watch_hz"] = args.watch_hz
        watcher = subprocess.Popen([sys.executable, "-m", "benchmarks._watcher", str(args.watch_hz)],
                                   stdin=subprocess.PIPE, cwd=ROOT)
    print(f"busmp benchmarks: {', '.join(names)}; {args.repeat} repetitions; busmp {meta['busmp']}",
          file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    results: list[_runner.WorkloadResult] = []
    code = 0
    try:
        for name in names:
            results.append(_runner.run_workload(load_workload(name), args.repeat, args.timeout))
            _runner.write_results(args.out, *_shown(args.merge, earlier, meta, results), plot=False)
    except KeyboardInterrupt:
        print("interrupted: writing the results gathered so far", file=sys.stderr)
        code = 130
    finally:
        if watcher is not None:
            assert watcher.stdin is not None
            watcher.stdin.close()  # the watcher's signal to stop
            watcher.wait()
    meta["total_seconds"] = round(time.perf_counter() - t0, 1)
    _runner.write_results(args.out, *_shown(args.merge, earlier, meta, results), plot=True)
    print(f"done in {meta['total_seconds']} s; wrote {args.out / 'results.md'}", file=sys.stderr)
    print((args.out / "results.md").read_text(encoding="utf-8"))
    return code


if __name__ == "__main__":
    sys.exit(main())
