"""The Ray backend: handlers run in Ray actors, on this machine or across a cluster.

Imported only for ``EventStore(..., backend="ray")``; nothing else in busmp imports Ray.

* ``cluster``: Ray itself (the ``ImportError`` naming the extra), and which cluster a store
  uses: the one this process is connected to, or a local one busmp starts and shuts down
  when the last store using it drains.
* ``actor``: the actor, which runs the same pipeline as a local worker
  (:class:`~busmp._workers.worker.Worker`) on slot payloads sent to it in batches.
* ``executor``: :class:`~busmp._ray.executor.RayExecutor`, the parent's side: it cuts a
  publish into jobs, sends each as one call, settles what comes back, and replaces an actor
  that dies.
"""
