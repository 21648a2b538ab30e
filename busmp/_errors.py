"""The exceptions busmp raises. Every one derives from :class:`BusError`."""

from __future__ import annotations

__all__ = ["BusError", "BufferFull", "StoreClosed", "HandlerPanic", "WorkerCrashed", "RemoteError"]


class BusError(Exception):
    """Base class of every busmp error."""


class BufferFull(BusError):
    """The ring has no free slot and the policy is ``RETURN_ERROR``."""


class StoreClosed(BusError):
    """The store was drained; it takes no more events."""


class HandlerPanic(BusError):
    """A handler in a worker raised a ``BaseException`` that is not an ``Exception``.

    The worker converts it (``SystemExit``, ``KeyboardInterrupt``, ...) and lives on.
    """

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"handler raised {type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))


class WorkerCrashed(BusError):
    """The worker process that held the event died (signal, ``os._exit``, out of memory)."""

    def __init__(self, pid: int, exitcode: int | None) -> None:
        how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"worker process {pid} died ({how}) while it held the event")
        self.pid = pid
        self.exitcode = exitcode

    @property
    def signal(self) -> int | None:
        """The signal number that killed the worker, if a signal did."""
        return -self.exitcode if self.exitcode is not None and self.exitcode < 0 else None

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.pid, self.exitcode))


class RemoteError(BusError):
    """A worker's exception that could not be pickled back, carried as text."""

    def __init__(self, type_name: str, message: str, traceback_text: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        text = f"{self.type_name}: {self.message}"
        return f"{text}\n\nRemote traceback:\n{self.traceback_text}" if self.traceback_text else text

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.traceback_text))
