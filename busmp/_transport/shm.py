"""Creating, attaching and releasing POSIX shared-memory blocks, with names busmp can find.

Every block busmp creates is named ``busmp_<owner pid>_<token>_<suffix>``, so a test can tell
busmp's blocks from anyone else's, and a new store sweeps up the blocks of this user's
processes that are gone (:func:`sweep_orphans`). The one exception to the naming is a store's
statistics block, ``busmp_stats_<uid>_<store name>``, which other processes look up by the
store's name (its line 0 holds the owner's pid: see ``stats``, which also sweeps those of
owners that are gone).
The creating process registers each block with multiprocessing's resource tracker, which
unlinks whatever is left if every process of the bus is killed.
"""

from __future__ import annotations

import os
import secrets
from multiprocessing import shared_memory
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PREFIX", "new_prefix", "sweep_orphans", "create", "create_with_header", "attach", "release",
    "unlink_quietly", "room",
]

PREFIX = "busmp_"
SHM_DIR = "/dev/shm"  # where POSIX shared memory lives on Linux; a tmpfs of limited size


def new_prefix() -> str:
    """A fresh name prefix for one store's blocks."""
    return f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"


def sweep_orphans() -> int:
    """Unlink the blocks of this user's busmp processes that are gone; returns how many.

    A store killed together with its resource tracker (``kill -9`` of the whole process group,
    an out-of-memory kill, a container stopped hard) leaves its ``busmp_<pid>_...`` blocks in
    ``/dev/shm``, a tmpfs that only a reboot would empty. A block is taken only when its file
    belongs to this user and no process with its pid exists; a pid in use again, by anyone,
    keeps it (a later sweep takes it).
    """
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0  # no /dev/shm (not Linux)
    uid, me, removed = os.getuid(), os.getpid(), 0
    for name in names:
        parts = name.split("_", 2)
        if len(parts) < 3 or parts[0] != PREFIX[:-1] or not parts[1].isdigit():
            continue  # not a store's block (the statistics blocks sweep themselves)
        pid = int(parts[1])
        if pid == me or _pid_exists(pid):
            continue
        path = os.path.join(SHM_DIR, name)
        try:
            if os.stat(path, follow_symlinks=False).st_uid != uid:
                continue
            os.unlink(path)
            removed += 1
        except OSError:
            continue  # gone already, or not ours to take
    return removed


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def create(name: str, size: int) -> shared_memory.SharedMemory:
    return _mapped_only(shared_memory.SharedMemory(name=name, create=True, size=max(size, 1)))


def _mapped_only(shm: shared_memory.SharedMemory) -> shared_memory.SharedMemory:
    """Close the block's file descriptor once it is mapped: the mapping keeps its own, and a
    store with many spill blocks would otherwise hold two descriptors per block."""
    fd = getattr(shm, "_fd", -1)
    if fd >= 0:
        os.close(fd)
        shm._fd = -1  # type: ignore[attr-defined]
    return shm


def create_with_header(name: str, size: int, dtype: np.dtype[Any], **fields: int) -> shared_memory.SharedMemory:
    """A new block whose first bytes are a ``dtype`` header with ``fields`` filled in."""
    import numpy as np  # the parent's side only: a spawned worker should not pay for numpy

    shm = create(name, size)
    header: Any = np.ndarray((), dtype=dtype, buffer=shm.buf)
    for key, value in fields.items():
        header[key] = value
    del header  # no view may outlive the block's close()
    return shm


def room(free: bool) -> int | None:
    """Bytes of shared memory the system has (``free``: now; else at all), None if unknown.

    A block larger than that is created without complaint (the file is sparse) but the
    process dies of SIGBUS when it writes past the end of the tmpfs, so busmp asks first.
    """
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return None  # no /dev/shm (not Linux): nothing to ask
    return (st.f_bavail if free else st.f_blocks) * st.f_frsize


def attach(name: str) -> shared_memory.SharedMemory:
    return _mapped_only(shared_memory.SharedMemory(name=name, create=False))


def release(shm: shared_memory.SharedMemory, unlink: bool) -> None:
    """Close ``shm`` and, for its owner, unlink it. Safe to call twice."""
    try:
        shm.close()
    except BufferError:
        # A numpy view still points into the block; the mapping goes when the view does.
        pass
    if unlink:
        unlink_quietly(shm)


def unlink_quietly(shm: shared_memory.SharedMemory) -> None:
    try:
        shm.unlink()
    except FileNotFoundError:
        pass
