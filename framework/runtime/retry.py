"""One retry policy: exponential delays, capped, optionally finite and jittered, and a pause that
a stop request ends early. UDF retries (`retry`), sink and fallback retries
(`retryStrategy.backoff`), dead-letter and buffer writes all draw their delays from here."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator

from framework.spec import Backoff, Retry


def exponential(first: float, factor: float, cap: float, retries: int | None = None,
                jitter: float = 0.0) -> Iterator[float]:
    """first, first×factor, … capped at `cap`; `retries` delays (None: without end). With
    `jitter`, each is scaled by a random 1 ± jitter, so that replicas failing together do not
    retry in lockstep."""
    delay = first
    n = 0
    while retries is None or n < retries:
        yield delay * (1 + random.uniform(-jitter, jitter)) if jitter else delay
        delay = min(delay * factor, cap)
        n += 1


def udf_delays(r: Retry) -> Iterator[float]:
    """A UDF's `retry`: `attempts` calls in all, so attempts - 1 delays, without jitter."""
    return exponential(r.interval, r.factor, r.cap, retries=r.attempts - 1)


def sink_delays(backoff: Backoff) -> Iterator[float]:
    """A sink's `retryStrategy.backoff`: without end (`steps` is counted by the caller), jittered."""
    return exponential(backoff.interval, backoff.factor, backoff.cap, jitter=backoff.jitter)


def steady(delay: float) -> Iterator[float]:
    """The same delay without end."""
    return exponential(delay, 1.0, delay)


async def pause(delay: float, stopping: asyncio.Event) -> None:
    """Wait `delay` seconds, or less if a stop is requested meanwhile."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stopping.wait(), delay)
