"""Middleware helpers: :func:`with_retry` and the backoff schedules it takes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from ._dispatch import Handler, Middleware
from ._event import Context, Event, Result
from ._pipeline import returns_awaitable

__all__ = ["with_retry", "constant_backoff", "exponential_backoff", "Backoff"]

Backoff = Callable[[int], float]


def constant_backoff(seconds: float) -> Backoff:
    """Wait ``seconds`` before every retry."""
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"constant_backoff() needs seconds >= 0, got {seconds!r}")

    def backoff(n: int) -> float:
        return float(seconds)

    return backoff


def exponential_backoff(base: float, cap: float | None = None) -> Backoff:
    """``base * 2**(n-1)`` before retry ``n``, capped at ``cap``; never negative or overflowing."""
    if base < 0 or math.isnan(base):
        raise ValueError(f"exponential_backoff() needs base >= 0, got {base!r}")
    if cap is not None and (cap < 0 or math.isnan(cap)):
        raise ValueError(f"exponential_backoff() needs cap >= 0 or None, got {cap!r}")

    def backoff(n: int) -> float:
        exponent = max(n - 1, 0)
        # Past 2**1023 a float overflows; a huge exponent simply means "the cap" (or infinity).
        delay = base * 2.0**exponent if exponent < 1000 else math.inf
        if cap is not None:
            delay = min(delay, cap)
        return delay if base > 0 else 0.0

    return backoff


def with_retry(retries: int, backoff: Backoff | None = None) -> Middleware:
    """Call the handler at most ``retries + 1`` times, sleeping ``backoff(n)`` before retry ``n``.

    A context deadline that would pass during a wait ends the retries with ``TimeoutError``.
    Around an ``async def`` handler the retries await: what the awaited handler raises is
    retried, and the waits are ``asyncio.sleep`` (other handlers run meanwhile).
    """
    if not isinstance(retries, int) or isinstance(retries, bool):
        raise TypeError(f"with_retry() needs an int number of retries, got {type(retries).__name__}")
    if retries < 0:
        raise ValueError(f"with_retry() needs retries >= 0, got {retries}")

    def delay_before(attempt: int, ctx: Context, exc: Exception) -> float:
        """The wait before retry ``attempt``; re-raises when the retries are used up."""
        if attempt > retries:
            raise exc
        delay = backoff(attempt) if backoff is not None else 0.0
        remaining = ctx.remaining()
        if remaining is not None and remaining < delay:
            raise TimeoutError(f"context deadline passes before retry {attempt} of {retries}") from exc
        return delay

    def middleware(handler: Handler) -> Handler:
        def retrying(ctx: Context, event: Event) -> Result | None:
            attempt = 0
            while True:
                try:
                    result = handler(ctx, event)
                except Exception as exc:
                    attempt += 1
                    delay = delay_before(attempt, ctx, exc)
                    if delay > 0:
                        time.sleep(delay)
                    continue
                if returns_awaitable(result):  # an async def handler: retry what it raises when awaited
                    return retrying_async(result, attempt, ctx, event)  # type: ignore[return-value]
                return result

        async def retrying_async(awaitable: Any, attempt: int, ctx: Context, event: Event) -> Any:
            import asyncio  # already imported: this runs in an event loop

            while True:
                try:
                    return await awaitable
                except Exception as exc:
                    attempt += 1
                    delay = delay_before(attempt, ctx, exc)
                    if delay > 0:
                        await asyncio.sleep(delay)  # other handlers run meanwhile
                while True:
                    try:
                        awaitable = handler(ctx, event)
                        break
                    except Exception as exc:
                        attempt += 1
                        delay = delay_before(attempt, ctx, exc)
                        if delay > 0:
                            await asyncio.sleep(delay)
                if not returns_awaitable(awaitable):
                    return awaitable

        retrying.__qualname__ = getattr(handler, "__qualname__", "handler")
        retrying.__module__ = getattr(handler, "__module__", __name__)
        return retrying

    return middleware
