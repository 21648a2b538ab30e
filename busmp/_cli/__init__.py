"""``python -m busmp``: the command line. One module per verb; this one parses arguments.

Exit codes: 0 ok; 1 no such store (the message lists the live ones), or ``doctor`` found a
problem; 2 usage (argparse's own code, also for an invalid store name).
All output is the command line's: library code never prints.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "OK", "NO_STORE", "USAGE"]

OK, NO_STORE, USAGE = 0, 1, 2

DESCRIPTION = """\
Watch and try busmp, the in-memory event bus whose handlers run in worker processes.

Stores are found by name (EventStore(..., name="orders"), or a generated bus-<pid>-<n>);
only the stores of the user running this command are visible."""

EPILOG = """\
examples:
  python -m busmp demo            CPU-bound handlers, sync vs worker processes
  python -m busmp ls              the live stores of this user
  python -m busmp stats orders    one snapshot of the store named "orders"
  python -m busmp top orders      a refreshing view (q or Ctrl-C quits)
  python -m busmp doctor          shared-memory room, start methods, versions

exit codes: 0 ok, 1 no such store (or doctor found a problem), 2 usage"""


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m busmp", description=DESCRIPTION, epilog=EPILOG,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = top.add_subparsers(dest="verb", metavar="VERB")

    demo = verbs.add_parser("demo", help="CPU-bound handlers offloaded to worker processes, with a progress "
                            "bar and a closing table (sync vs workers, events/s, speed-up)",
                            description="Run the same CPU-bound events (primes counted in pure Python) through "
                            "a sync store and a store with worker processes, and compare.")
    demo.add_argument("--events", type=_positive, default=None,
                      help="how many events (default: about 4 s of sync work on this machine)")
    demo.add_argument("--workers", type=_positive, default=None, help="worker processes (default: one per core)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar, only the table")

    verbs.add_parser("ls", help="list the live stores of this user",
                     description="List the live busmp stores of this user, with their counts.")

    stats = verbs.add_parser("stats", help="one snapshot of a store's statistics",
                             description="Print one snapshot of a live store's statistics (counted in events).")
    stats.add_argument("name", help="the store's name (see `ls`)")
    stats.add_argument("--json", action="store_true", help="print the fields of busmp.Stats as one JSON object")

    top_ = verbs.add_parser("top", help="a refreshing view of a store (or of every live store)",
                            description="A refreshing terminal view: rates, a bar per worker, ring depth, dead "
                            "letters. q or Ctrl-C quits. Without NAME: every live store, one line each.")
    top_.add_argument("name", nargs="?", help="the store's name (default: every live store)")
    top_.add_argument("--interval", type=_interval, default=0.5, help="seconds between refreshes (default 0.5)")

    verbs.add_parser("doctor", help="check this machine: shared-memory room, start methods, versions",
                     description="Check this machine for busmp: /dev/shm size and free room against what a "
                     "default store needs, start methods, CPU count, versions.")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit code."""
    args = parser().parse_args(argv)
    if args.verb is None:
        parser().print_help(sys.stderr)
        return USAGE
    if args.verb == "demo":
        from .demo import run_demo

        return run_demo(events=args.events, workers=args.workers, progress=not args.no_progress)
    if args.verb == "ls":
        from .show import list_stores

        return list_stores()
    if args.verb == "stats":
        from .show import show_stats

        return show_stats(args.name, as_json=args.json)
    if args.verb == "top":
        from .top import run_top

        return run_top(args.name, interval=args.interval)
    from .doctor import run_doctor

    return run_doctor()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (e.g. 0.5), got {text!r}") from None
    if not 0.05 <= value <= 60:
        raise argparse.ArgumentTypeError(f"the interval is 0.05 to 60 seconds, got {text!r}")
    return value
