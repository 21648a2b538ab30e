"""busmp demo: CPU-bound handlers offloaded to worker processes (the same as ``python -m busmp demo``)."""

from __future__ import annotations

import sys

from busmp._cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
