"""The public package: every name of the contract importable from ``busmp``, and cheap to import."""

from __future__ import annotations

import subprocess
import sys

import pytest

import busmp

CONTRACT = [
    "Event", "Result", "Context", "Dispatcher", "EventStore", "Transaction", "OverrunPolicy",
    "DROP_OLDEST", "BLOCK", "RETURN_ERROR", "DeadLetter", "DeadLetterQueue", "Metrics", "Timer",
    "with_retry", "exponential_backoff", "constant_backoff",
    "BusError", "BufferFull", "StoreClosed", "HandlerPanic", "WorkerCrashed", "RemoteError",
]


@pytest.mark.parametrize("name", CONTRACT)
def test_every_contract_name_is_exported(name):
    assert name in busmp.__all__
    assert getattr(busmp, name) is not None
    assert name in dir(busmp)


def test_star_import_gives_every_exported_name():
    namespace: dict[str, object] = {}
    exec("from busmp import *", namespace)
    assert set(busmp.__all__) <= set(namespace)


def test_an_unknown_name_is_an_attribute_error_that_names_it():
    with pytest.raises(AttributeError, match="no attribute 'EvenStore'"):
        busmp.EvenStore


def test_importing_busmp_leaves_the_store_machinery_for_first_use():
    code = ("import sys, busmp; before = 'busmp._store' in sys.modules; "
            "busmp.EventStore; print(before, 'busmp._store' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"], out.stderr


# EventStore's names in API.md, those other parts of the contract are adding included: the
# test keeps to this list so that it needs no copy of API.md beside the clone.
STORE_CONTRACT = {
    "subscribe", "subscribe_many", "publish", "register_batch", "use", "on_before", "on_after",
    "on_error", "flush", "drain", "close", "metrics", "stats", "schedule", "schedule_after",
    "begin_transaction", "dlq",
    "submit", "asubmit", "asubscribe", "apublish", "aflush", "adrain", "name",
}
STORE_REQUIRED = STORE_CONTRACT - {"submit", "asubmit", "asubscribe", "apublish", "aflush", "adrain", "name"}


def test_help_on_the_store_shows_only_the_contract():
    public = {name for name in dir(busmp.EventStore) if not name.startswith("_")}
    assert public <= STORE_CONTRACT, f"public but not in the contract: {sorted(public - STORE_CONTRACT)}"
    assert public >= STORE_REQUIRED, f"missing: {sorted(STORE_REQUIRED - public)}"
    with busmp.EventStore(busmp.Dispatcher()) as store:
        on_instance = {name for name in dir(store) if not name.startswith("_")}
    assert on_instance == public  # nothing public is set per instance either
