"""The statistics block: one small shared-memory block per store, found by the store's name.

Other processes of the same user read it (``busmp.read_stats``, ``python -m busmp ls|stats|top``)
without a lock and without the store noticing. Its name is ``busmp_stats_<uid>_<store name>``:
``/dev/shm`` is shared by every user, the uid keeps users apart, and the store's name makes a
lookup one ``shm_open`` (and two live stores of one user cannot share a name: the block is
created with ``O_EXCL``).

Layout: 8-byte little-endian words, one 64-byte line per writer (``stats_dtype()`` is the same
as a numpy structured dtype, for the parent and readers; a worker, which never imports numpy,
writes its line with plain word stores)::

    line 0   magic, version, owner pid, owner start time (f8, psutil's create_time),
             created (f8, time.time()), buffer size, workers, arena pages  (parent, at creation)
    line 1   published, processed, errors, dropped, pending, in flight,
             dead letters, unhandled           (all in events)            (parent)
    line 2   state, updated (f8), published/s, processed/s, errors/s,
             dropped/s (f8 rates over the last second), free (events),
             free pages                                                   (parent)
    line 3+k worker k: pid, state, handled (events), jobs done, since (f8)
                                  (the worker while it runs; the parent while no process
                                   fills the position: before a start, after a death)

The parent writes lines 1 and 2 from one thread (the store's *stats ticker*, several times a
second): the hot paths (``subscribe``, ``publish``, the collector) pay nothing for it. A
worker writes its own line around each job (not per event).

Liveness. A block outlives its owner if the owner is killed (SIGKILL leaves no time to unlink).
A reader treats a block as live only when its owner pid runs *and* that process started when
line 0 says (a recycled pid has another start time), and the state word is not CLOSED. A new
store sweeps the dead blocks of this user, and reclaims its own name from a dead owner.

Ordering: a reader may see one line a tick newer than another, never a torn word (aligned
8-byte stores are atomic on every platform busmp runs on). Snapshots are for watching, not
for accounting: ``EventStore.stats()`` in the owning process is the exact count.
"""

from __future__ import annotations

import os
import re
import struct
import time
from functools import cache
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

from . import shm as _shm

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "NAME_RE", "check_name", "block_name", "stats_dtype", "StatsBlock", "live_names", "snapshot",
    "sweep", "owner_alive", "process_start_time", "WorkerLine", "read_block", "W_HANDLED", "W_JOBS",
    "OPEN", "CLOSING", "CLOSED", "STARTING", "IDLE", "BUSY", "DEAD", "STORE_STATES", "WORKER_STATES",
]

CACHE_LINE = 64
WORDS = CACHE_LINE // 8
MAGIC = 0x62_75_73_6D_70_73_74_61  # "busmpsta"
VERSION = 1
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,24}")

# Store states (line 2) and worker states (line 3+k).
OPEN, CLOSING, CLOSED = 1, 2, 3
STARTING, IDLE, BUSY, DEAD = 1, 2, 3, 4
STORE_STATES = {OPEN: "open", CLOSING: "closing", CLOSED: "closed"}
WORKER_STATES = {0: "none", STARTING: "starting", IDLE: "idle", BUSY: "busy", DEAD: "dead"}

IDENTITY = ("magic", "version", "owner_pid", "owner_start", "created", "buffer_size", "workers", "pages")
COUNTERS = ("published", "processed", "errors", "dropped", "pending", "in_flight", "dead_letters", "unhandled")
STATE = ("state", "updated", "published_rate", "processed_rate", "errors_rate", "dropped_rate",
         "free", "free_pages")
WORKER = ("pid", "state", "handled", "jobs", "since")
FLOATS = {"owner_start", "created", "updated", "published_rate", "processed_rate", "errors_rate",
          "dropped_rate", "since"}
IDENTITY_LINE, COUNTERS_LINE, STATE_LINE, FIRST_WORKER_LINE = 0, 1, 2, 3
YOUNG_SECONDS = 5.0  # a block without line 0 for longer was left by a store killed while it was made
START_TOLERANCE = 0.05  # seconds: psutil derives start times from clock ticks

_IDENTITY = struct.Struct("<QQqddQQQ")
_COUNTERS = struct.Struct("<8q")
_STATE = struct.Struct("<qddddd2q")
_WORKER = struct.Struct("<qqqqd")
# Word indices, within its line, of what a worker stores around each job.
W_PID, W_STATE, W_HANDLED, W_JOBS, W_SINCE = range(5)


def check_name(name: object) -> str:
    """``name`` if it is a valid store name, else ``ValueError`` naming the rule."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"a store name is 1-24 characters of A-Z a-z 0-9 . _ - (so that it can name "
                         f"a shared-memory block and be typed in a shell), got {name!r}")
    return name


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def block_prefix() -> str:
    return f"{_shm.PREFIX}stats_{_uid()}_"


def block_name(name: str) -> str:
    return block_prefix() + name


def block_size(workers: int) -> int:
    return CACHE_LINE * (FIRST_WORKER_LINE + workers)


@cache
def stats_dtype(workers: int) -> np.dtype[Any]:
    """The block as a numpy structured dtype (see the module docstring): the owner's view of it.
    Readers copy the bytes and unpack them with the struct layouts below (same offsets, checked
    by a spec), so that ``read_stats`` needs no numpy."""
    import numpy as np

    names: list[str] = []
    formats: list[str] = []
    offsets: list[int] = []
    for line, fields in ((IDENTITY_LINE, IDENTITY), (COUNTERS_LINE, COUNTERS), (STATE_LINE, STATE)):
        for i, field in enumerate(fields):
            names.append(field)
            formats.append("<f8" if field in FLOATS else "<i8")
            offsets.append(line * CACHE_LINE + 8 * i)
    worker = np.dtype({"names": list(WORKER), "formats": ["<f8" if f in FLOATS else "<i8" for f in WORKER],
                       "offsets": [8 * i for i in range(len(WORKER))], "itemsize": CACHE_LINE})
    names.append("worker")
    formats.append((worker, (workers,)))  # type: ignore[arg-type]
    offsets.append(FIRST_WORKER_LINE * CACHE_LINE)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": block_size(workers)})


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil's ``create_time``), None if there is none."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def owner_alive(pid: int, started: float) -> bool:
    """Whether the process that wrote a block's line 0 still runs (not a recycled pid)."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return abs((process_start_time(pid) or 0.0) - started) < START_TOLERANCE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's pid: alive, but not ours (the block's uid says ours)
    now = process_start_time(pid)
    return now is not None and abs(now - started) < START_TOLERANCE


class WorkerLine:
    """A worker's own line of the block, as the worker writes it (no numpy in a worker)."""

    def __init__(self, name: str, index: int) -> None:
        self._shm = _shm.attach(name)
        buf: Any = self._shm.buf
        self._words: Any = buf.cast("q")
        self._floats: Any = buf.cast("d")
        self._base = (FIRST_WORKER_LINE + index) * WORDS

    def started(self, pid: int, state: int, since: float) -> None:
        self.set(W_PID, pid)
        self.set_state(state, since)

    def handled(self) -> int:
        return int(self._words[self._base + W_HANDLED])

    def set(self, word: int, value: int) -> None:
        self._words[self._base + word] = value

    def set_state(self, state: int, since: float | None = None) -> None:
        if since is not None:
            self._floats[self._base + W_SINCE] = since
        self._words[self._base + W_STATE] = state

    def close(self) -> None:
        self._words.release()
        self._floats.release()
        _shm.release(self._shm, unlink=False)


class StatsBlock:
    """The owner's side: create (or reclaim) the block, write its lines, unlink it."""

    def __init__(self, name: str, buffer_size: int, workers: int, pages: int) -> None:
        import numpy as np

        self.name = name
        self.workers = workers
        self.shm = _claim(block_name(name), block_size(workers))
        buf: Any = self.shm.buf
        self._buf: Any = buf
        self.view: Any = np.ndarray((), dtype=stats_dtype(workers), buffer=buf)
        pid = os.getpid()
        started = process_start_time(pid) or 0.0
        _IDENTITY.pack_into(buf, 0, MAGIC, VERSION, pid, started, time.time(), buffer_size, workers, pages)
        self.write_state(OPEN, time.time(), (0.0, 0.0, 0.0, 0.0), buffer_size, pages)

    @property
    def block(self) -> str:
        return self.shm.name

    def write_counters(self, values: tuple[int, ...]) -> None:
        """Line 1, in ``COUNTERS`` order."""
        if self.view is not None:
            _COUNTERS.pack_into(self._buf, COUNTERS_LINE * CACHE_LINE, *values)

    def write_state(self, state: int, updated: float, rates: tuple[float, float, float, float],
                    free: int, free_pages: int) -> None:
        if self.view is not None:
            _STATE.pack_into(self._buf, STATE_LINE * CACHE_LINE, state, updated, *rates, free, free_pages)

    def set_worker(self, index: int, pid: int, state: int, handled: int | None = None) -> None:
        """A worker position's line, while no process fills it (before a start, after a death)."""
        if self.view is None:
            return
        line = self.view["worker"][index]
        if handled is not None:
            line["handled"] = handled
        line["pid"] = pid
        line["since"] = time.time()
        line["state"] = state

    def worker_line(self, index: int) -> tuple[int, int, float]:
        """(pid, state, since) of worker position ``index``; (0, DEAD, 0.0) once the block is closed."""
        if self.view is None:
            return 0, DEAD, 0.0
        line = self.view["worker"][index]
        return int(line["pid"]), int(line["state"]), float(line["since"])

    def close(self) -> None:
        """Mark the store closed, then unlink the block (readers that hold it see CLOSED)."""
        if self.view is None:
            return
        self.view["state"] = CLOSED
        self.view = None
        self._buf = None
        _shm.release(self.shm, unlink=False)
        try:
            self.shm.unlink()
        except FileNotFoundError:  # gone already: our resource tracker must forget it all the same
            from multiprocessing import resource_tracker

            resource_tracker.unregister(self.shm._name, "shared_memory")  # type: ignore[attr-defined]


def _claim(block: str, size: int) -> shared_memory.SharedMemory:
    """Create ``block``; if it exists, take it over only when its owner is dead."""
    for _ in range(20):
        try:
            return _shm.create(block, size)
        except FileExistsError:
            pass
        status = _status(block)[0]
        if status == LIVE:
            name = block[len(block_prefix()):]
            raise ValueError(f"a live busmp store is already named {name!r} (by this user); choose another "
                             "name, or drain that store first (see `python -m busmp ls`)")
        if status in (YOUNG, CLOSING_BLOCK):
            time.sleep(0.01)  # its owner is filling line 0, or unlinking the block, right now
            continue
        _unlink(block)  # a dead owner's block (SIGKILL): reclaimed
    raise ValueError(f"could not create the statistics block {block!r}: another process keeps "
                     "creating it; choose another name")


LIVE, DEAD_OWNER, YOUNG, CLOSING_BLOCK, MISSING = "live", "dead", "young", "closing", "missing"


def _status(block: str) -> tuple[str, int]:
    """Whether ``block`` belongs to a live store (and its worker count).

    YOUNG: line 0 is not written yet (a store is being created, or was killed right then:
    a block that stays young is swept once it is older than ``YOUNG_SECONDS``). CLOSING_BLOCK:
    marked closed by a live owner that is unlinking it: not live, and not for a sweeper to
    unlink (the owner's unlink also tells its resource tracker)."""
    raw = read_block(block, block_size(0))
    if raw is None:
        return MISSING, 0
    if len(raw) < block_size(0):
        return DEAD_OWNER, 0
    magic, version, pid, started, _created, _size, workers, _pages = _IDENTITY.unpack_from(raw, 0)
    (state,) = struct.unpack_from("<q", raw, STATE_LINE * CACHE_LINE)
    if magic == 0:
        return (YOUNG if _age(block) < YOUNG_SECONDS else DEAD_OWNER), 0
    if magic != MAGIC or version != VERSION or not owner_alive(pid, started):
        return DEAD_OWNER, 0
    if state == CLOSED:
        return CLOSING_BLOCK, 0
    return LIVE, workers


def read_block(block: str, limit: int) -> bytes | None:
    """Up to ``limit`` bytes of ``block``, copied; None if there is no such block.

    Not through ``SharedMemory``: before Python 3.13 attaching one registers it with this
    process's resource tracker, which would unlink another process's live block when this one
    exits (and starts a tracker process just to read a few lines).
    """
    import _posixshmem
    import mmap

    try:
        fd = _posixshmem.shm_open("/" + block, os.O_RDONLY, 0)
    except OSError:
        return None
    try:
        size = min(os.fstat(fd).st_size, limit)
        if size <= 0:
            return b""
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            return bytes(mapped[:size])
    finally:
        os.close(fd)


def _age(block: str) -> float:
    try:
        return time.time() - os.stat(os.path.join(_shm.SHM_DIR, block)).st_mtime
    except OSError:
        return 0.0


def _unlink(block: str) -> None:
    """Unlink a dead owner's block (its resource tracker, if it still runs, forgets it)."""
    import _posixshmem

    try:
        _posixshmem.shm_unlink("/" + block)
    except FileNotFoundError:
        pass


def _blocks() -> list[str]:
    prefix = block_prefix()
    try:
        return sorted(n for n in os.listdir(_shm.SHM_DIR) if n.startswith(prefix))
    except FileNotFoundError:  # no /dev/shm (not Linux): nothing to list
        return []


def live_names() -> list[str]:
    """The names of this user's live stores, sorted."""
    prefix = block_prefix()
    return [block[len(prefix):] for block in _blocks() if _status(block)[0] == LIVE]


def sweep() -> int:
    """Unlink the blocks of this user's stores whose owner died; returns how many."""
    gone = 0
    for block in _blocks():
        if _status(block)[0] == DEAD_OWNER:
            _unlink(block)
            gone += 1
    return gone


def snapshot(name: str) -> dict[str, Any] | None:
    """A copy of live store ``name``'s block as plain Python values, None if it is not live."""
    block = block_name(name)
    status, workers = _status(block)
    if status != LIVE:
        return None
    raw = read_block(block, block_size(workers))
    if raw is None or len(raw) < block_size(workers):
        return None
    values: dict[str, Any] = {}
    for line, fields, layout in ((IDENTITY_LINE, IDENTITY, _IDENTITY), (COUNTERS_LINE, COUNTERS, _COUNTERS),
                                 (STATE_LINE, STATE, _STATE)):
        values.update(zip(fields, layout.unpack_from(raw, line * CACHE_LINE)))
    values["worker"] = [dict(zip(WORKER, _WORKER.unpack_from(raw, (FIRST_WORKER_LINE + k) * CACHE_LINE)))
                        for k in range(workers)]
    if values["state"] == CLOSED or values["magic"] != MAGIC:
        return None
    return values
