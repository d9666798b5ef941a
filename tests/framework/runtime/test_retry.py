"""The one retry policy (framework/runtime/retry.py): the delays each caller draws."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from framework.runtime.retry import exponential, pause, sink_delays, steady, udf_delays
from framework.spec import Backoff, Retry


def test_exponential_doubles_up_to_the_cap_and_ends_after_retries():
    assert list(exponential(0.1, 2.0, 0.5, retries=5)) == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert list(exponential(0.1, 2.0, 0.5, retries=0)) == []


def test_udf_retry_gives_attempts_minus_one_delays():
    assert list(udf_delays(Retry(attempts=4, interval=0.05, factor=3.0, cap=1.0))) == pytest.approx([0.05, 0.15, 0.45])
    assert list(udf_delays(Retry(attempts=1))) == []


def test_sink_backoff_never_ends_and_jitters_within_bounds():
    delays = list(itertools.islice(sink_delays(Backoff(interval=1.0, factor=2.0, cap=4.0, jitter=0.25)), 50))
    plain = [1.0, 2.0] + [4.0] * 48
    assert all(p * 0.75 <= d <= p * 1.25 for d, p in zip(delays, plain, strict=True))
    assert list(itertools.islice(sink_delays(Backoff(interval=1.0, factor=2.0, cap=4.0)), 4)) == [1.0, 2.0, 4.0, 4.0]


def test_steady_repeats_one_delay():
    assert list(itertools.islice(steady(0.5), 3)) == [0.5, 0.5, 0.5]


async def test_pause_ends_early_when_stopping():
    stopping = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stopping.set)
    started = time.monotonic()
    await pause(5.0, stopping)
    assert time.monotonic() - started < 1.0
