"""``ls`` and ``stats``: the live stores of this user, and one snapshot of one of them."""

from __future__ import annotations

import json
import sys
import time

from .._metrics import Stats
from .._transport import stats as _stats
from .._watch import read_stats
from . import NO_STORE, OK, USAGE

__all__ = ["list_stores", "show_stats", "lookup", "count", "rate"]


def lookup(name: str) -> Stats | int:
    """The store's stats, or the exit code after saying why there are none (on stderr)."""
    try:
        return read_stats(name)
    except ValueError as exc:
        print(f"busmp: {exc}", file=sys.stderr)
        return USAGE
    except KeyError as exc:
        print(f"busmp: {exc.args[0]}", file=sys.stderr)
        return NO_STORE


def count(n: int) -> str:
    return f"{n:,}"


def rate(r: float) -> str:
    return f"{r:,.0f}/s" if r >= 10 or r == 0 else f"{r:,.1f}/s"


def list_stores() -> int:
    rows: list[Stats] = []
    for name in _stats.live_names():
        try:
            rows.append(read_stats(name))
        except KeyError:
            continue  # drained between the listing and the read
    if not rows:
        print("no live busmp stores for this user (a store is live from EventStore(...) to drain())")
        return OK
    header = ("NAME", "PID", "WORKERS", "STATE", "PUBLISHED", "PROCESSED", "PENDING", "IN FLIGHT",
              "DEAD", "PROCESSED/S")
    table = [header] + [(s.name, str(s.pid), str(s.workers), s.state, count(s.published), count(s.processed),
                         count(s.pending), count(s.in_flight), count(s.dead_letters), rate(s.processed_rate))
                        for s in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return OK


def show_stats(name: str, as_json: bool) -> int:
    found = lookup(name)
    if isinstance(found, int):
        return found
    stats = found
    if as_json:
        print(json.dumps(stats.to_dict(), indent=2))
        return OK
    age = max(0.0, time.time() - stats.updated)
    print(f"store {stats.name!r}: pid {stats.pid}, {stats.workers} workers, {stats.state} "
          f"(written {age:.1f} s ago)")
    lines = [
        ("published", count(stats.published), rate(stats.published_rate)),
        ("processed", count(stats.processed), rate(stats.processed_rate)),
        ("errors", count(stats.errors), rate(stats.errors_rate)),
        ("dropped", count(stats.dropped), rate(stats.dropped_rate)),
        ("unhandled", count(stats.unhandled), ""),
        ("pending", count(stats.pending), ""),
        ("in flight", count(stats.in_flight), ""),
        ("dead letters", count(stats.dead_letters), ""),
        ("ring", f"{count(stats.slots - stats.free_slots)} of {count(stats.slots)} events held", ""),
    ]
    for label, value, per_second in lines:
        print(f"  {label:<13}{value:>14}  {per_second}".rstrip())
    for k, (pid, state, handled) in enumerate(zip(stats.worker_pids, stats.worker_states, stats.per_worker)):
        print(f"  worker {k:<6}pid {pid:<8} {state:<9}{count(handled):>10} handled")
    return OK
