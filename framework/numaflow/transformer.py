"""The SourceTransform service of a Numaflow SDK program: one SourceTransformFn stream (handshake
first); a request per record (its id inside the request), one response per id with the record's
results, each with its own event time (a transformer may rewrite it), keys and tags."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from typing import Any

from pynumaflow.proto.sourcetransformer import transform_pb2, transform_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.convert import epoch_ms, timestamp, to_message
from framework.numaflow.program import NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.numaflow.session import ProgramSession
from framework.numaflow.stream import BidiStream, UdfError
from framework.sdk import Datum, Message

Stream = BidiStream[transform_pb2.SourceTransformRequest, transform_pb2.SourceTransformResponse]
SOCKET = "sourcetransform.sock"


async def open_transform_stream(program: NumaflowProgram, info: ServerInfo) -> Stream:
    stub = transform_pb2_grpc.SourceTransformStub(program.channel(SOCKET))
    stream: Stream = BidiStream(program, stub.SourceTransformFn, lambda r: r.id)
    await stream.open(transform_pb2.SourceTransformRequest(handshake=transform_pb2.Handshake(sot=True)),
                      lambda r: r.HasField("handshake") and r.handshake.sot)
    return stream


class NumaflowTransformer:
    """`transform` gives each datum's messages (event time set on each) or the UdfError it raised
    alone; the program dying raises ProgramDied."""

    def __init__(self, launch: ProgramLaunch, watermark: Callable[[], int | None]):
        self.session: ProgramSession[Any] = ProgramSession(launch, (serverinfo.SOURCE_TRANSFORMER,),
                                                           open_transform_stream)
        self._watermark = watermark
        self._ids = itertools.count()

    async def start(self) -> None:
        await self.session.start()

    async def transform(self, datums: list[Datum]) -> list[list[Message] | UdfError]:
        calls = [self.session.isolated(functools.partial(self._one, d=d)) for d in datums]
        results = await asyncio.gather(*calls, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, UdfError):
                raise r if isinstance(r, ProgramDied) else ProgramDied(f"{type(r).__name__}: {r}")
        return list(results)  # type: ignore[arg-type]

    async def _one(self, stream: Stream, d: Datum) -> list[Message]:
        rid = str(next(self._ids))
        q = stream.expect(rid)
        try:
            stream.send(transform_pb2.SourceTransformRequest(request=transform_pb2.SourceTransformRequest.Request(
                keys=d.keys, value=d.value, event_time=timestamp(d.event_time_ms),
                watermark=timestamp(self._watermark()), headers=dict(d.headers), id=rid)))
            resp = await q.get()
        finally:
            stream.forget(rid)
        if isinstance(resp, BaseException):
            raise resp
        return [to_message(r.keys, r.value, r.tags, epoch_ms(r.event_time)) for r in resp.results]

    async def stop(self) -> None:
        await self.session.close()
