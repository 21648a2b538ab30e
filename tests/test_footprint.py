"""Shared-memory footprint: a default store maps much more than it touches.

Docker gives a container 64 MiB of ``/dev/shm`` by default. A default store maps 40 MiB (the
ring and its page arena) plus 8 MiB per worker (its job and result channels), but tmpfs files
are sparse: only pages that are written take memory. These specifications hold the README's
numbers to the truth and check that a burst of small events, even into two stores at once,
stays inside 64 MiB of touched pages.

Touched memory is measured per file: ``st_blocks * 512`` of the store's blocks in ``/dev/shm``
(named ``busmp_<this pid>_...``), so other processes using shared memory do not disturb it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from busmp import Dispatcher, Event, EventStore

SHM = Path("/dev/shm")
MIB = 1 << 20
DOCKER_DEFAULT = 64 * MIB
BURST = 1 << 16  # events: as many as a default ring holds
README = Path(__file__).resolve().parent.parent / "README.md"

pytestmark = pytest.mark.skipif(not SHM.is_dir(), reason="POSIX shared memory in /dev/shm (Linux)")


def noop(ctx, ev):
    return None


def footprint() -> tuple[int, int]:
    """(mapped, touched) bytes of this process's busmp blocks in /dev/shm."""
    mapped = touched = 0
    for path in SHM.glob(f"busmp_{os.getpid()}_*"):
        try:
            st = path.stat()
        except FileNotFoundError:  # released while we looked
            continue
        mapped += st.st_size
        touched += st.st_blocks * 512
    return mapped, touched


def burst(store: EventStore) -> None:
    accepted = store.subscribe_many(Event("tick", {"n": n, "user": f"u-{n}"}) for n in range(BURST))
    assert accepted == BURST
    assert store.publish() == BURST
    store.flush(timeout=60)
    assert store.metrics().processed == BURST


@pytest.fixture
def dispatcher() -> Dispatcher:
    d = Dispatcher()
    d.register("tick", noop)
    return d


def documented_mib(pattern: str) -> int:
    match = re.search(pattern, README.read_text(encoding="utf-8"))
    assert match, f"README no longer states its shared-memory numbers ({pattern!r}); keep the Shared memory section"
    return int(match.group(1))


def test_the_readme_states_what_a_default_store_maps(dispatcher):
    base, per_worker = footprint()[0], documented_mib(r"plus (\d+) MiB per worker")
    ring = documented_mib(r"default store maps (\d+) MiB")
    with EventStore(dispatcher):
        sync_mapped = footprint()[0] - base
        with EventStore(dispatcher, workers=2):
            two_mapped = footprint()[0] - base - sync_mapped
    fix = "update the README's Shared memory section to the sizes busmp maps now"
    assert round(sync_mapped / MIB) == ring, f"a default store maps {sync_mapped / MIB:.1f} MiB; {fix}"
    assert round(two_mapped / MIB) == ring + 2 * per_worker, \
        f"a default store with 2 workers maps {two_mapped / MIB:.1f} MiB; {fix}"


@pytest.mark.timeout(120)
def test_a_default_store_with_two_workers_touches_little_of_what_it_maps(dispatcher):
    before_mapped, before_touched = footprint()
    with EventStore(dispatcher, workers=2) as store:
        burst(store)
        mapped, touched = (now - then for now, then in zip(footprint(), (before_mapped, before_touched)))
    assert touched > 0, "the measurement saw no touched pages at all: is st_blocks reported by /dev/shm?"
    assert mapped > DOCKER_DEFAULT // 2, f"a default store with 2 workers maps {mapped / MIB:.1f} MiB"
    assert touched < DOCKER_DEFAULT, (
        f"a burst of {BURST} small events touched {touched / MIB:.1f} MiB of /dev/shm, more than "
        "Docker's default 64 MiB: shared memory must stay sparse until used (never write a whole block up front)")


@pytest.mark.timeout(120)
def test_two_default_stores_at_once_stay_inside_docker_s_default(dispatcher):
    before = footprint()[1]
    with EventStore(dispatcher, workers=2) as first, EventStore(dispatcher, workers=2) as second:
        burst(first)
        burst(second)
        mapped, touched = footprint()[0], footprint()[1] - before
    assert mapped > DOCKER_DEFAULT, f"two default stores map {mapped / MIB:.1f} MiB (more than 64 MiB, sparse)"
    assert touched < DOCKER_DEFAULT, (
        f"two default stores, each taking a burst of {BURST} small events, touched {touched / MIB:.1f} MiB "
        "of /dev/shm, more than Docker's default 64 MiB: shared memory must stay sparse until used")
