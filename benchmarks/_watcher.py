"""A reader that polls ``busmp.read_stats`` of every live store at a given rate, as
``python -m busmp top`` does, until its stdin closes: ``python -m benchmarks --watch-hz 10``
runs one beside the workloads, to measure what being watched costs the bus.

Usage: ``python -m benchmarks._watcher HZ`` (prints how many snapshots it read, at the end).
"""

from __future__ import annotations

import select
import sys

import busmp
from busmp._transport.stats import live_names


def main() -> int:
    hz = float(sys.argv[1])
    reads = 0
    while not select.select([sys.stdin], [], [], 1.0 / hz)[0]:
        for name in live_names():
            try:
                busmp.read_stats(name)
                reads += 1
            except KeyError:
                pass  # drained between the listing and the read
    print(f"watcher: {reads} snapshots read at {hz:g} Hz", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
