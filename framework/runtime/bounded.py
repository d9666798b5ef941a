"""Handler calls with a deadline (`udf.timeout`, `sink.timeout`), so no call can hold a vertex.

A coroutine is cancelled at its deadline. A plain function runs on a thread, which nothing can
stop: at the deadline that thread is abandoned (it runs on, daemonic, its result ignored) and the
next calls get a fresh thread. Abandoned threads still running are "stuck"; the process counts
them, and once `max_stuck()` are stuck the worker finishes its batch and exits non-zero, so that
its supervisor (or Kubernetes) starts a clean process instead of one slowly filling with threads.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

DEFAULT_MAX_STUCK = 4
_stuck: list[threading.Thread] = []  # abandoned threads, pruned once they end


class HandlerTimeout(TimeoutError):
    """A handler call that did not return within its timeout; not retried (it would hang again)."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        super().__init__(f"handler did not return within {timeout:g}s")


def max_stuck() -> int:
    """How many handler threads may be stuck past their timeout before the process exits."""
    return max(1, int(os.environ.get("NATSFLOW_MAX_STUCK_THREADS", DEFAULT_MAX_STUCK)))


def stuck_threads() -> int:
    """Abandoned handler threads of this process that are still running."""
    _stuck[:] = [t for t in _stuck if t.is_alive()]
    return len(_stuck)


def too_many_stuck() -> str | None:
    """The reason this process should exit (non-zero) after its current batch, or None."""
    n = stuck_threads()
    if n < max_stuck():
        return None
    return (f"{n} handler threads are stuck in calls that exceeded their timeout "
            f"(limit NATSFLOW_MAX_STUCK_THREADS={max_stuck()}); exiting so that a fresh process takes over")


async def within(aw: Awaitable[T], timeout: float) -> T:
    """`await aw`, cancelled after `timeout` seconds (HandlerTimeout). A coroutine that ignores its
    cancellation is left running, never waited for."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(_consume)
    raise HandlerTimeout(timeout)


class deadline:
    """`async with deadline(t):` cancels the enclosed awaits after `t` seconds and raises
    HandlerTimeout (a TimeoutError of the handler's own passes through as it is). Cheaper than
    `within` (no task): for the per-message path of async handlers."""

    __slots__ = ("_cm", "_timeout")

    def __init__(self, timeout: float):
        self._timeout = timeout
        self._cm = asyncio.timeout(timeout)

    async def __aenter__(self) -> Self:
        await self._cm.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self._cm.__aexit__(exc_type, exc, tb)
        except TimeoutError:
            if self._cm.expired():
                raise HandlerTimeout(self._timeout) from None
            raise


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" noise for a late failure


def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _deliver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, fut, result, exc)
    except RuntimeError:  # the loop is closed: the process is exiting and nobody waits any more
        pass


class _Lane:
    """One daemon thread running jobs in order until it is handed None."""

    def __init__(self, name: str):
        self.jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            job()


class _Progress:
    """What a batch job running on a lane has done; read by the event loop (the GIL keeps each
    attribute read and list append whole)."""

    __slots__ = ("current", "results", "stop")

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.current: tuple[int, float] | None = None  # (index, monotonic start) of the call running
        self.stop = False


class Threads:
    """Where a vertex's plain handler functions run: one lane at a time, replaced by a fresh one
    when a call overruns its deadline."""

    def __init__(self, name: str = "natsflow-udf"):
        self._name = name
        self._lane: _Lane | None = None

    def _current(self) -> _Lane:
        if self._lane is None:
            self._lane = _Lane(self._name)
        return self._lane

    def _abandon(self, lane: _Lane) -> None:
        if lane is self._lane:
            self._lane = None
        lane.jobs.put(None)  # ends the thread once the stuck call returns, if ever
        _stuck.append(lane.thread)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on the lane. Cancelling this await (e.g. `within`'s deadline) abandons the
        lane: its thread may be inside `fn` for good."""
        lane = self._current()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:
                _deliver(loop, fut, None, exc)
            else:
                _deliver(loop, fut, result, None)

        lane.jobs.put(job)
        try:
            return await fut
        except asyncio.CancelledError:
            self._abandon(lane)
            raise

    async def each(self, fn: Callable[[Any], T], items: Sequence[Any], timeout: float) -> list[T | BaseException]:
        """`fn(item)` for every item in one thread hop (the hop costs more than a small handler),
        each call bounded by `timeout`: an Exception it raises, or HandlerTimeout, takes its
        place in the result. After a timeout the rest goes on on a fresh thread."""
        loop = asyncio.get_running_loop()
        results: list[T | BaseException] = []
        start = 0
        while start < len(items):
            lane = self._current()
            progress = _Progress()
            fut: asyncio.Future[list[T | BaseException]] = loop.create_future()
            lane.jobs.put(self._batch_job(loop, fut, fn, items[start:], progress))
            while True:
                current = progress.current
                wait = timeout if current is None else current[1] + timeout - time.monotonic()
                if wait > 0:
                    await asyncio.wait({fut}, timeout=wait)
                    if fut.done():
                        results.extend(fut.result())
                        return results
                    continue
                # `current` overran: what came before it is done; it times out; the rest moves on.
                assert current is not None  # a wait runs out only while a call is running
                progress.stop = True
                self._abandon(lane)
                results.extend(progress.results[:current[0]])
                results.append(HandlerTimeout(timeout))
                start += current[0] + 1
                break
        return results

    @staticmethod
    def _batch_job(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], fn: Callable[[Any], Any],
                   items: Sequence[Any], progress: _Progress) -> Callable[[], None]:
        def job() -> None:
            out = progress.results
            for i, item in enumerate(items):
                if progress.stop:
                    return
                progress.current = (i, time.monotonic())
                try:
                    out.append(fn(item))
                except Exception as exc:
                    out.append(exc)
            progress.current = None
            _deliver(loop, fut, out, None)

        return job
