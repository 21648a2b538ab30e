"""``top``: a refreshing terminal view of one store, or one line per live store.

Plain ANSI escape codes (alternate screen, cursor home, clear to end of line) and the terminal
in cbreak mode (``termios``/``tty``), so that ``q`` quits at once, with no dependency and over
ssh. Ctrl-C quits as well. The terminal is restored on every way out, and when stdout is not a
terminal the frames are simply printed one after another.

Per-worker rates are the difference between snapshots of each worker's handled count taken
``WORKER_RATE_SECONDS`` apart (a worker writes its count as each job ends, and a job may hold
thousands of events); the store's rates are its own (over its last second).
"""

from __future__ import annotations

import os
import select
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .._metrics import Stats
from .._transport import stats as _stats
from .._watch import read_stats
from . import OK
from .show import count, lookup, rate

__all__ = ["run_top", "render_store", "render_all"]

ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"  # alternate screen, cursor hidden/shown
HOME, CLEAR_LINE, CLEAR_REST = "\x1b[H", "\x1b[K", "\x1b[J"
QUIT_KEYS = {"q", "Q", "\x03", "\x04"}  # q, Ctrl-C, Ctrl-D
STALE_SECONDS = 2.0  # figures older than this are marked as such
WORKER_RATE_SECONDS = 5.0  # per-worker rates span this much of the past


def bar(fraction: float, width: int) -> str:
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render_store(stats: Stats, previous: Stats | None, width: int) -> list[str]:
    """The lines of the one-store view; ``previous``: a snapshot some seconds older, for the
    per-worker rates."""
    clock = time.strftime("%H:%M:%S")
    head = f"busmp top: {stats.name}  (pid {stats.pid}, {stats.workers} workers, {stats.state})"
    age = time.time() - stats.updated
    if age >= STALE_SECONDS:  # a sync store writes only when it is called (see busmp._watch)
        head += f"  last written {age:.0f} s ago"
    lines = [head + clock.rjust(max(1, width - len(head))),
             "",
             f"  events     published {count(stats.published):>12}   processed {count(stats.processed):>12}"
             f"   errors {count(stats.errors):>9}",
             f"  per second published {rate(stats.published_rate):>12}   processed {rate(stats.processed_rate):>12}"
             f"   errors {rate(stats.errors_rate):>9}",
             f"  now        pending {count(stats.pending):>14}   in flight {count(stats.in_flight):>12}"
             f"   dead letters {count(stats.dead_letters)}",
             f"  lost       dropped {count(stats.dropped):>14}   unhandled {count(stats.unhandled):>12}",
             ""]
    held = stats.slots - stats.free_slots
    span = max(10, min(50, width - 40))
    ring_bar = bar(held / max(stats.slots, 1), span)
    lines.append(f"  ring     {ring_bar} {count(held)} of {count(stats.slots)} events held")
    if stats.workers:
        lines += ["", "  workers                            events/s over 5 s (bar: of the busiest)   handled"]
        elapsed = stats.updated - previous.updated if previous is not None else 0.0
        rates = []
        for k, handled in enumerate(stats.per_worker):
            before = previous.per_worker[k] if previous is not None and k < len(previous.per_worker) else handled
            rates.append((handled - before) / elapsed if elapsed > 0 else 0.0)
        top_rate = max(rates, default=0.0) or 1.0
        now = time.time()
        for k, (pid, state, since, handled, r) in enumerate(zip(stats.worker_pids, stats.worker_states,
                                                                stats.worker_since, stats.per_worker, rates)):
            # How long a worker has been busy with its current job: a stuck handler shows here.
            shown = f"{state} {now - since:4.1f}s" if state == "busy" and since else state
            lines.append(f"  {k:>3}  pid {pid:<8} {shown:<11}{bar(r / top_rate, span - 22)} {rate(r):>10}"
                         f"  {count(handled):>10}")
    else:
        lines += ["", "  sync mode: handlers run in the owner's publish() (counts move when it returns)"]
    lines += ["", "  q or Ctrl-C quits"]
    return [line[:width] for line in lines]


def render_all(rows: list[Stats], width: int) -> list[str]:
    """The lines of the every-store view."""
    lines = [f"busmp top: {len(rows)} live stores of this user" + time.strftime("%H:%M:%S").rjust(20), ""]
    if not rows:
        lines.append("  none yet: a store is live from EventStore(...) to drain()")
    else:
        lines.append(f"  {'NAME':<24} {'PID':>8} {'WORKERS':>7} {'PROCESSED':>12} {'PROCESSED/S':>12} "
                     f"{'PENDING':>9} {'IN FLIGHT':>9} {'DEAD':>6}")
        for s in rows:
            lines.append(f"  {s.name:<24} {s.pid:>8} {s.workers:>7} {count(s.processed):>12} "
                         f"{rate(s.processed_rate):>12} {count(s.pending):>9} {count(s.in_flight):>9} "
                         f"{count(s.dead_letters):>6}")
    lines += ["", "  python -m busmp top NAME watches one · q or Ctrl-C quits"]
    return [line[:width] for line in lines]


@contextmanager
def screen(out: TextIO) -> Iterator[bool]:
    """The alternate screen and cbreak stdin while inside; yields whether it is a terminal."""
    live = out.isatty()
    saved = None
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is not None:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    if live:
        out.write(ENTER)
        out.flush()
    try:
        yield live
    finally:
        if live:
            out.write(LEAVE)
            out.flush()
        if fd is not None and saved is not None:
            import termios

            termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def wait_for_key(seconds: float) -> bool:
    """Sleep up to ``seconds``; True if a quit key was pressed."""
    if sys.stdin is None or not sys.stdin.isatty():
        time.sleep(seconds)
        return False
    fd = sys.stdin.fileno()
    until = time.monotonic() + seconds
    while (left := until - time.monotonic()) > 0:
        if select.select([fd], [], [], left)[0]:
            key = os.read(fd, 32).decode(errors="replace")
            if not key or set(key) & QUIT_KEYS:
                return True
    return False


def draw(out: TextIO, lines: list[str], live: bool) -> None:
    if live:
        out.write(HOME + "".join(line + CLEAR_LINE + "\r\n" for line in lines) + CLEAR_REST)
    else:
        out.write("\n".join(lines) + "\n\n")
    out.flush()


def run_top(name: str | None, interval: float = 0.5, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if name is not None:
        found = lookup(name)  # a bad or unknown name fails before the screen changes
        if isinstance(found, int):
            return found
    gone: str | None = None
    try:
        with screen(out) as live:
            history: deque[Stats] = deque()
            while True:
                width = shutil.get_terminal_size((100, 24)).columns
                if name is None:
                    lines = render_all(_all_stats(), width)
                else:
                    try:
                        stats = read_stats(name)
                    except KeyError:
                        gone = f"busmp: store {name!r} is gone (drained, or its process ended)"
                        break
                    history.append(stats)
                    while len(history) > 2 and stats.updated - history[1].updated >= WORKER_RATE_SECONDS:
                        history.popleft()
                    lines = render_store(stats, history[0] if len(history) > 1 else None, width)
                draw(out, lines, live)
                if wait_for_key(interval):
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C where the terminal does not deliver it as a key: quit all the same
    if gone is not None:
        print(gone, file=out)
    return OK


def _all_stats() -> list[Stats]:
    rows = []
    for store in _stats.live_names():
        try:
            rows.append(read_stats(store))
        except KeyError:
            continue
    return rows
