"""Shared helpers for the benchmark workloads: soft imports, time limits, clean-up.

Nothing here measures anything; the runner (``_runner``) and the workload modules do.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import _handlers

# Extra keyword options handed to every busmp ``EventStore`` the suite builds
# (``--busmp-opt key=value`` on the command line fills it).
BUSMP_OPTIONS: dict[str, Any] = {}

# Upper bound for any single wait a contender does (flush, join, result).
WAIT_TIMEOUT = 30.0


class Unavailable(Exception):
    """A peer library is not installed: reported as ``n/a (not installed)``."""


class BenchTimeout(Exception):
    """A contender run took longer than the runner's per-run limit."""


class Mismatch(Exception):
    """A contender finished but did not handle every item it was given."""


def optional_import(name: str) -> Any:
    """Import an optional peer library or raise :class:`Unavailable`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:  # not installed (or broken install)
        raise Unavailable(f"{name} not installed ({exc})") from None


def load_busmp() -> Any:
    """Import busmp. Any failure propagates and is reported as an error for that contender."""
    return importlib.import_module("busmp")


def busmp_store(busmp: Any, dispatcher: Any, **kwargs: Any) -> Any:
    """Build an EventStore with the user's extra ``--busmp-opt`` options merged in."""
    opts = dict(kwargs)
    opts.update(BUSMP_OPTIONS)
    return busmp.EventStore(dispatcher, **opts)


def close_busmp_store(store: Any) -> None:
    """Close a store, bounded in time even if ``close`` itself misbehaves."""
    if store is None:
        return
    with time_limit(30.0, "busmp store close"):
        try:
            store.close(timeout=15.0)
        except TimeoutError:
            pass  # per the contract the workers are stopped anyway


def busmp_processed(store: Any) -> int:
    """Handler calls the store completed. A store that cannot say fails the run (an unchecked
    run is not a result)."""
    return int(store.metrics().processed)


def check_busmp_processed(store: Any, before: int, expected: int) -> None:
    after = busmp_processed(store)
    if after - before != expected:
        raise Mismatch(f"busmp handled {after - before} of {expected} events")


def time_busmp_round(projection: str, handler: Any, payloads: list[Any], warm_up: list[Any],
                     **store_options: Any) -> float:
    """One busmp contender run: a store built and warmed up with ``warm_up`` (untimed), then
    ``subscribe_many`` + ``publish`` + ``flush`` of one event per payload, timed and checked."""
    busmp = load_busmp()
    d = busmp.Dispatcher()
    d.register(projection, handler)
    events = [busmp.Event(projection, p) for p in payloads]
    store = None
    try:
        store = busmp_store(busmp, d, **store_options)
        store.subscribe_many(busmp.Event(projection, p) for p in warm_up)
        store.publish()
        store.flush(timeout=WAIT_TIMEOUT)
        before = busmp_processed(store)
        t0 = time.perf_counter()
        accepted = store.subscribe_many(events)
        store.publish()
        store.flush(timeout=WAIT_TIMEOUT)
        dt = time.perf_counter() - t0
        if accepted != len(events):
            raise Mismatch(f"busmp subscribe_many accepted {accepted} of {len(events)}")
        check_busmp_processed(store, before, len(events))
        return dt
    finally:
        close_busmp_store(store)


def time_sync_busmp(produce: Callable[[Any, Any], None], expected: int, publish: bool,
                    **store_options: Any) -> float:
    """One sync-store (workers=0) contender run: ``produce(store, Event)`` and, with ``publish``,
    one ``publish()``, timed; then checked: ``expected`` events accepted (and handled)."""
    busmp = load_busmp()
    d = busmp.Dispatcher()
    d.register("p", _handlers.noop_handler)
    store = busmp_store(busmp, d, buffer_size=1 << 18, workers=0, **store_options)
    try:
        before = busmp_processed(store)
        t0 = time.perf_counter()
        produce(store, busmp.Event)
        taken = store.publish() if publish else expected
        dt = time.perf_counter() - t0
        if store.metrics().published != expected or taken != expected:
            raise Mismatch(f"busmp accepted {store.metrics().published} and published {taken} of {expected}")
        if publish:
            check_busmp_processed(store, before, expected)
        return dt
    finally:
        close_busmp_store(store)


def time_unordered(imap: Any, func: Any, warm_up: list[Any], items: list[Any], **chunking: int) -> float:
    """One warmed-up ``imap_unordered``-style round over ``items``, timed and checked for
    completeness. ``chunking`` names the pool's chunk argument (``chunksize=``/``chunk_size=``);
    the warm-up uses chunks of one and the same call as the timed round."""
    list(imap(func, warm_up, **{name: 1 for name in chunking}))
    t0 = time.perf_counter()
    n = sum(1 for _ in imap(func, items, **chunking))
    dt = time.perf_counter() - t0
    if n != len(items):
        raise Mismatch(f"{n} of {len(items)} results")
    return dt


def time_mpire_round(workers: int, func: Any, warm_up: list[Any], items: list[Any], chunk_size: int) -> float:
    """One mpire contender run on a keep-alive pool (keep-alive workers keep the map mode of
    the warm-up call, so it is the same call as the timed one)."""
    mpire = optional_import("mpire")
    pool = mpire.WorkerPool(n_jobs=workers, keep_alive=True)
    ok = False
    try:
        dt = time_unordered(pool.imap_unordered, func, warm_up, items, chunk_size=chunk_size)
        ok = True
    finally:
        if ok:
            pool.stop_and_join()
        else:
            pool.terminate()
    return dt


# --------------------------------------------------------------------------- time limits


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str = "run") -> Iterator[None]:
    """Raise :class:`BenchTimeout` in the main thread after ``seconds`` (nestable, SIGALRM)."""
    if (
        seconds is None
        or seconds <= 0
        or threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "setitimer")
    ):
        yield
        return

    def _on_alarm(signum: int, frame: Any) -> None:
        raise BenchTimeout(f"{what} exceeded {seconds:g} s")

    prev_handler = signal.signal(signal.SIGALRM, _on_alarm)
    prev_remaining, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev_handler)
        if prev_remaining:
            left = prev_remaining - (time.monotonic() - t0)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001))


# --------------------------------------------------------------------------- process pools


@contextlib.contextmanager
def mp_pool(processes: int) -> Iterator[Any]:
    """``multiprocessing.Pool`` that is always terminated/joined, also on error."""
    pool = multiprocessing.Pool(processes)
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if ok:
            pool.close()
        else:
            pool.terminate()
        pool.join()


def _kill_executor_processes(ex: Any) -> None:
    procs = getattr(ex, "_processes", None) or {}
    for p in list(procs.values()):
        with contextlib.suppress(Exception):
            p.terminate()


@contextlib.contextmanager
def process_pool_executor(max_workers: int, factory: Callable[..., Any] | None = None) -> Iterator[Any]:
    """A ``ProcessPoolExecutor`` (or a compatible ``factory``) always shut down, also on error."""
    if factory is None:
        from concurrent.futures import ProcessPoolExecutor as factory
    ex = factory(max_workers=max_workers)
    ok = False
    try:
        yield ex
        ok = True
    finally:
        if not ok:
            _kill_executor_processes(ex)
        try:
            ex.shutdown(wait=True, cancel_futures=True)
        except TypeError:  # loky: shutdown(wait=True, kill_workers=False)
            ex.shutdown(wait=True, kill_workers=not ok)


def warm_up_executor(ex: Any, fn: Callable[[Any], Any], workers: int) -> None:
    """Make sure every worker process exists and has run ``fn`` once."""
    list(ex.map(fn, range(4 * workers)))


@contextlib.contextmanager
def consumer_processes(target: Callable[..., Any], args: tuple[Any, ...], n: int) -> Iterator[list[Any]]:
    """Start ``n`` ``multiprocessing.Process(target, args)``; always joined or terminated."""
    procs = [multiprocessing.Process(target=target, args=args, daemon=True) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        stop_processes(procs)


def stop_processes(procs: list[Any], grace: float = 5.0) -> None:
    deadline = time.monotonic() + grace
    for p in procs:
        if p.pid is None:
            continue
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.pid is not None and p.is_alive():
            p.terminate()
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
    for p in procs:
        with contextlib.suppress(Exception):
            p.close()


def close_queue(q: Any, clean: bool) -> None:
    """Close a multiprocessing queue; never block on a feeder thread after an error."""
    if q is None:
        return
    with contextlib.suppress(Exception):
        if not clean and hasattr(q, "cancel_join_thread"):
            q.cancel_join_thread()
        if hasattr(q, "close"):
            q.close()
        if clean and hasattr(q, "join_thread"):
            q.join_thread()


# --------------------------------------------------------------------------- leak checks

_SHM = "/dev/shm"
_HELPER_MARKERS = ("resource_tracker", "forkserver", "semaphore_tracker", "semlock_tracker")


def shm_snapshot() -> set[str]:
    try:
        return set(os.listdir(_SHM))
    except OSError:
        return set()


def _shm_names_in_use() -> set[str]:
    """Names under /dev/shm some live process still maps or holds open."""
    used: set[str] = set()
    prefix = _SHM + "/"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    i = line.find(prefix)
                    if i >= 0:
                        used.add(line[i + len(prefix):].split()[0])
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        used.add(target[len(prefix):].split()[0])
    return used


def _ours(name: str, pids: set[int]) -> bool:
    """busmp names its segments after the creating pid (``busmp_<pid>_<token>_...``)."""
    tokens = set(name.replace(".", "_").replace("-", "_").split("_"))
    return any(str(pid) in tokens for pid in pids)


def clean_leaked_shm(before: set[str], pids: set[int]) -> list[str]:
    """Remove /dev/shm entries created since ``before`` by this run that no live process uses.

    Only names carrying one of ``pids`` (this process and the children it had) count as ours:
    other programs on the machine (a concurrent test run, say) create segments too. Entries still
    mapped or open by some process are left alone. Returns the names removed.
    """
    new = {n for n in shm_snapshot() - before if _ours(n, pids)}
    if not new:
        return []
    time.sleep(0.2)  # let finalizers/resource trackers finish their own unlinking
    new &= shm_snapshot()
    if not new:
        return []
    in_use = _shm_names_in_use()
    removed = []
    for name in sorted(new - in_use):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_SHM, name))
            removed.append(name)
    return removed


def _proc_children(pid: int) -> set[int]:
    kids: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/children") as fh:
                    kids.update(int(x) for x in fh.read().split())
    return kids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def child_snapshot() -> set[int]:
    return _proc_children(os.getpid())


def reap_children(before: set[int]) -> list[str]:
    """Stop child processes started since ``before`` that are still running; return what was left."""
    left: list[str] = []
    for p in multiprocessing.active_children():
        left.append(f"{p.name} (pid {p.pid})")
        with contextlib.suppress(Exception):
            p.terminate()
            p.join(2.0)
            if p.is_alive():
                p.kill()
                p.join(2.0)
    for pid in sorted(_proc_children(os.getpid()) - before):
        if _state(pid) in ("Z", "X", "?"):
            continue
        cmd = _cmdline(pid)
        if any(m in cmd for m in _HELPER_MARKERS):
            continue  # multiprocessing's own long-lived helpers
        left.append(f"pid {pid} ({cmd[:60]})")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
            time.sleep(0.2)
            if _state(pid) not in ("Z", "X", "?"):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, os.WNOHANG)
    return left
