"""``doctor``: what this machine offers busmp (shared memory, start methods, cores, versions)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import multiprocessing
import os
import platform
import sys

from . import NO_STORE, OK

__all__ = ["run_doctor", "default_store_bytes"]

MIB = 1 << 20


def default_store_bytes(workers: int, buffer_size: int = 1 << 16, slot_size: int = 512) -> int:
    """Shared memory a store takes at most: its ring (slots and page arena), each worker's job and
    result channels, and its statistics block (spill blocks for huge events come on top)."""
    from .._transport import stats as _stats
    from .._transport.ring import PAGE_SIZE, _arena_offset, arena_pages
    from .._workers.processes import JOB_CHANNEL_BYTES_PER_SLOT, RESULT_CHANNEL_BYTES
    from .._transport.channel import DATA

    ring = _arena_offset(buffer_size, slot_size) + arena_pages(buffer_size, slot_size) * PAGE_SIZE
    channels = 2 * DATA + JOB_CHANNEL_BYTES_PER_SLOT * buffer_size + (1 << 20) + RESULT_CHANNEL_BYTES
    return ring + workers * channels + _stats.block_size(workers)


def _version(package: str) -> str:
    """A package's version without importing it (Ray takes seconds to import)."""
    if importlib.util.find_spec(package) is None:
        return "not installed"
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "importable (version unknown)"


def run_doctor() -> int:
    from .._transport import shm as _shm
    from .._transport import stats as _stats
    from .._workers.pool import DEFAULT_START_METHOD
    import busmp

    problems: list[str] = []
    cores = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    print("busmp doctor")
    print(f"  python          {platform.python_version()} ({sys.executable})")
    print(f"  busmp           {busmp.__version__}")
    for package in ("numpy", "cloudpickle", "psutil", "ray"):
        print(f"  {package:<16}{_version(package)}")
    print(f"  cpus            {cores} ({usable} usable by this process)")
    methods = multiprocessing.get_all_start_methods()
    print(f"  start methods   {', '.join(methods)} (busmp's default: {DEFAULT_START_METHOD})")

    total, free = _shm.room(free=False), _shm.room(free=True)
    need_one, need_all = default_store_bytes(1), default_store_bytes(usable)
    print(f"  shared memory   {_shm.SHM_DIR}: ", end="")
    if total is None or free is None:
        print("not found (not Linux?): the system decides how much shared memory there is")
    else:
        print(f"{total / MIB:,.0f} MiB, {free / MIB:,.0f} MiB free")
        print(f"  a default store (buffer_size 65536, slot_size 512) takes up to {need_one / MIB:,.0f} MiB "
              f"with 1 worker, {need_all / MIB:,.0f} MiB with {usable}")
        if need_all > free:
            problems.append(f"{_shm.SHM_DIR} has {free / MIB:,.0f} MiB free, less than the "
                            f"{need_all / MIB:,.0f} MiB a default store with {usable} workers may take: lower "
                            "buffer_size or slot_size, or give the machine more shared memory "
                            "(docker: --shm-size=1g)")
    live = _stats.live_names()
    print(f"  live stores     {len(live)}" + (f" ({', '.join(live)})" if live else ""))
    if DEFAULT_START_METHOD not in methods:
        problems.append(f"the default start method {DEFAULT_START_METHOD} is not available here; "
                        f"pass start_method= one of {methods}")
    if usable < 2:
        problems.append("only one CPU is usable: worker processes cannot run handlers in parallel here")
    for problem in problems:
        print(f"problem: {problem}")
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return OK if not problems else NO_STORE
