"""mapStream: `async def fn(keys, datum)` yields messages; each is written as soon as it is
produced (in order per input), and the input is acked after its last output is stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from nats import errors as nats_errors
from nats.aio.msg import Msg

from framework.isb import envelope, requests
from framework.isb.ports import Reads
from framework.runtime.bounded import HandlerTimeout, deadline
from framework.runtime.forward import ForwardLoop
from framework.runtime.map import map_output
from framework.runtime.retry import udf_delays
from framework.runtime.routing import UnpublishableOutput
from framework.runtime.udf import HandlerResultError, VertexFailure
from framework.sdk import Datum, Message, handler_kind
from framework.spec import Udf, load_handler


class MapStreamProcessor:
    """The BatchProcessor of a mapStream vertex."""
    def __init__(self, loop: ForwardLoop, udf: Udf, fn: Callable[[list[str], Datum], AsyncIterator[Any]]):
        self.loop = loop
        self.rt = loop.rt
        self.router = loop.io.router
        self.udf = udf
        self.fn = fn

    @classmethod
    async def open(cls, loop: ForwardLoop) -> MapStreamProcessor:
        udf = loop.rt.v.udf
        assert udf is not None and udf.map_stream is not None
        fn = load_handler(udf.map_stream.handler, loop.rt.base_dir)
        if handler_kind(fn) != "async_generator":
            raise TypeError(f"mapStream handler {udf.map_stream.handler!r} must be an async generator "
                            "function (async def ... yield Message(...))")
        return cls(loop, udf, fn)

    async def read(self, reader: Reads) -> list[Msg]:
        return await reader.fetch(self.rt.limits.read_timeout)

    async def close(self) -> None:
        pass

    async def process(self, msgs: list[Msg]) -> bool:
        good, failed = self.loop.decode(msgs)
        with self.rt.metrics.udf_time.time():
            errors = await asyncio.gather(*(self._stream_one(m, d) for m, d in good))
        failed += [(m, f"{type(e).__name__}: {e}") for (m, _), e in zip(good, errors) if e is not None]
        await self.loop.dead_letter(failed)
        return True

    async def _stream_one(self, m: Msg, d: Datum) -> Exception | None:
        prefix, origin = self.rt.v.name + ":", envelope.origin(m)
        metrics = self.rt.metrics
        delays = udf_delays(self.udf.retry)
        request = requests.request_of(d.headers) if envelope.HDR_REQUEST_ID in d.headers else None
        while True:
            try:
                i = written = 0
                stream = self.fn(d.keys, d)
                while True:
                    try:
                        async with deadline(self.udf.timeout):  # each step: a stream may run long
                            out = await anext(stream)
                    except StopAsyncIteration:
                        break
                    if not isinstance(out, Message):
                        raise HandlerResultError(f"mapStream handler yielded {type(out).__name__}; expected Message")
                    if out.is_drop:
                        metrics.dropped("drop_tag", 1)
                    else:
                        # Ids depend only on (input, position): a retried stream rewrites the same ids.
                        item = map_output(prefix, origin, i, d, out)
                        # A stream's length is unknown: each output an edge takes is a part.
                        part = request is not None and bool(self.router.targets(item.tags, item.late))
                        if part and request is not None:
                            item.headers = requests.with_part(item.headers, f"{request[1]}.{written}")
                        self.router.check_outputs([item], [i])
                        self.rt.count_writes(await self.router.write([item]))
                        written += part
                    i += 1
                if request is not None and self.loop.io.requests is not None:
                    await self.loop.io.requests.splits([(d.headers, written)])
                return None
            except (HandlerTimeout, UnpublishableOutput) as exc:  # final: retrying would fail the same way
                metrics.error.inc(1)
                return exc
            except (TimeoutError, nats_errors.Error, VertexFailure):
                raise
            except Exception as exc:
                metrics.error.inc(1)
                delay = next(delays, None)
                if delay is None or self.rt.stopping.is_set():
                    return exc
                await asyncio.sleep(delay)
