"""Ray, and the cluster a store uses.

A store joins the cluster this process is connected to (``ray.init(address=...)`` called by
the program), and leaves it running. With none, the first store starts a local one with
``ray.init()``; that cluster is shut down when the last store using it drains (or is
garbage-collected), since nobody else asked for it. Its workers run at this process's
niceness, not Ray's default of 15 (see ``actor.match_niceness``).
"""

from __future__ import annotations

import os
import threading
from types import ModuleType
from typing import Any

__all__ = ["require_ray", "join", "leave", "check_actor_options", "actor_options"]

INSTALL_HINT = "pip install 'busmp[ray]'"
#: Options of every actor unless ray_actor_options says otherwise: spread over the nodes. Its
#: CPUs (``num_cpus``) default to one each, or an equal share of the cluster's when there are
#: more actors than CPUs (see ``actor_options``).
DEFAULT_OPTIONS: dict[str, Any] = {"scheduling_strategy": "SPREAD"}

_lock = threading.Lock()
_users = 0          # stores using the cluster right now
_started = False    # busmp started the cluster they use (so the last one out shuts it down)


def require_ray() -> ModuleType:
    """The ``ray`` module; ``ImportError`` naming the extra to install when it is missing."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"backend='ray' needs Ray, which is not installed here: {INSTALL_HINT} "
                          "(on every machine of the cluster)") from exc
    module: ModuleType = ray  # typed the same whether or not Ray (and its stubs) is installed
    return module


def join() -> None:
    """A store starts using the cluster: connect to a local new one if there is none."""
    global _users, _started
    ray = require_ray()
    with _lock:
        if not ray.is_initialized():
            _init(ray)
            _started = True
        elif _users == 0:
            _started = False  # connected by the program: it is the program's to shut down
        _users += 1


def _init(ray: ModuleType) -> None:
    """``ray.init()``, with the workers of a cluster it starts at this process's niceness (Ray
    starts them at 15 unless told, see ``actor.match_niceness``): it is started for busmp's
    actors, which run the program's handlers. The program's own setting is kept."""
    key = "RAY_worker_niceness"
    added = key not in os.environ
    if added:
        os.environ[key] = str(os.getpriority(os.PRIO_PROCESS, 0))
    try:
        ray.init()
    finally:
        if added:
            os.environ.pop(key, None)


def leave() -> None:
    """A store stopped using the cluster; the last one out shuts down a cluster busmp started."""
    global _users, _started
    ray = require_ray()
    with _lock:
        _users -= 1
        if _users == 0 and _started:
            _started = False
            if ray.is_initialized():
                ray.shutdown()


def check_actor_options(options: object) -> dict[str, Any]:
    """``ray_actor_options`` as ``.options()`` gets them; ``TypeError``/``ValueError`` naming the fix."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TypeError(f"ray_actor_options must be a dict (or None), got {type(options).__name__}")
    for key in ("max_restarts", "max_task_retries"):
        if options.get(key, 0) != 0:
            raise ValueError(f"ray_actor_options[{key!r}] must be 0: busmp never runs an event twice on "
                             "its own; an actor that dies is replaced and its events become dead letters "
                             "(retry them with DeadLetterQueue.replay or with_retry)")
    return dict(options)


def actor_options(options: dict[str, Any], workers: int) -> dict[str, Any]:
    """What each of ``workers`` actors asks of the cluster: the defaults, then ``options``."""
    ray = require_ray()
    merged = {**DEFAULT_OPTIONS, **options}
    if "num_cpus" not in merged:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        merged["num_cpus"] = min(1.0, round(cpus / workers, 2)) or 0.01
    return merged
