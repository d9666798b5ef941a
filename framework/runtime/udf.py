"""Calling a user's map/flatmap function over a batch: sync in one thread hop, async concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from framework.runtime.bounded import Threads, deadline, within
from framework.sdk import Datum, Message, handler_kind

DEFAULT_TIMEOUT = 300.0  # udf.timeout
Result = list[Message] | BaseException


class VertexFailure(RuntimeError):
    """Raised by a runner when the vertex cannot go on (e.g. its foreign program died): the batch
    is neither retried nor dead-lettered; the vertex hands it back and exits non-zero."""


class Runs(Protocol):
    """What MapProcessor calls: a result per datum, in order (MapRunner, BatchMapRunner, or a
    foreign program's client such as framework/numaflow/mapper.py)."""

    async def run(self, datums: list[Datum]) -> list[Result]:
        """One result (messages or the exception) per datum."""

    def close(self) -> None:
        """Release what the runner holds."""


class HandlerResultError(TypeError):
    """A handler returned something that is not a Message, a list of them or None."""


def normalize(result: Any) -> list[Message]:
    """A handler may return a Message, a list/tuple/iterable of them, or None (= filter out)."""
    if isinstance(result, Message):
        return [result]
    if result is None:
        return []
    if isinstance(result, (list, tuple)):
        out = result
    elif hasattr(result, "__iter__") and not isinstance(result, (str, bytes, dict)):
        out = list(result)
    else:
        raise HandlerResultError(
            f"handler returned {type(result).__name__}; expected Message, list[Message] or None"
        )
    for m in out:
        if not isinstance(m, Message):
            raise HandlerResultError(
                f"handler returned a list holding {type(m).__name__}; expected only Message"
            )
    return list(out)


class MapRunner:
    """Runs `fn(keys, datum)` for every datum in a batch, isolating each call's exception; a call
    longer than `timeout` s gets HandlerTimeout (framework/runtime/bounded.py)."""

    def __init__(self, fn: Callable[..., Any], timeout: float = DEFAULT_TIMEOUT, threads: Threads | None = None):
        self._fn = fn
        self._async = handler_kind(fn) == "async"
        self._timeout = timeout
        self._threads = threads or Threads()

    async def run(self, datums: list[Datum]) -> list[Result]:
        if self._async:
            return list(await asyncio.gather(*(self._one_async(d) for d in datums)))
        # One thread hop per batch, not per message: the hop costs more than a small UDF.
        return await self._threads.each(self._one_sync, datums, self._timeout)

    async def _one_async(self, d: Datum) -> Result:
        try:
            async with deadline(self._timeout):
                return normalize(await self._fn(d.keys, d))
        except Exception as exc:
            return exc

    def _one_sync(self, d: Datum) -> list[Message]:
        return normalize(self._fn(d.keys, d))

    def close(self) -> None:
        pass


class BatchMapRunner:
    """Runs `fn(datums) -> results` on chunks of at most `max_batch_size` (one model call per
    chunk, bounded by `timeout`). The handler returns one result per input: a list in input order,
    or a dict keyed by `Datum.id`; each result is what a map handler may return. Any mismatch, or
    a call over the timeout, fails the whole chunk."""

    def __init__(self, fn: Callable[..., Any], max_batch_size: int, timeout: float = DEFAULT_TIMEOUT,
                 threads: Threads | None = None):
        self._fn = fn
        self._size = max_batch_size
        self._async = handler_kind(fn) == "async"
        self._timeout = timeout
        self._threads = threads or Threads()

    async def run(self, datums: list[Datum]) -> list[Result]:
        out: list[Result] = []
        for start in range(0, len(datums), self._size):
            chunk = datums[start:start + self._size]
            try:
                call = self._fn(chunk) if self._async else self._threads.call(self._fn, chunk)
                raw = await within(call, self._timeout)
                out.extend(self.align(chunk, raw))
            except Exception as exc:
                out.extend([exc] * len(chunk))
        return out

    @staticmethod
    def align(chunk: list[Datum], raw: Any) -> list[Result]:
        if isinstance(raw, dict):
            ids = [d.id for d in chunk]
            if set(raw) != set(ids) or len(set(ids)) != len(ids):
                missing = [i for i in ids if i not in raw][:3]
                extra = [k for k in raw if k not in set(ids)][:3]
                raise HandlerResultError(
                    f"batch handler returned results for {len(raw)} ids, expected exactly the {len(ids)} "
                    f"input ids (missing {missing}, unexpected {extra})")
            return [normalize(raw[i]) for i in ids]
        if not isinstance(raw, (list, tuple)):
            raise HandlerResultError(
                f"batch handler returned {type(raw).__name__}; expected a list (one result per input) "
                "or a dict keyed by Datum.id")
        if len(raw) != len(chunk):
            raise HandlerResultError(f"batch handler returned {len(raw)} results for {len(chunk)} inputs")
        return [normalize(r) for r in raw]

    def close(self) -> None:
        pass
