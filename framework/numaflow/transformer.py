"""The SourceTransform service of a Numaflow SDK program: one SourceTransformFn stream (handshake
first); a request per record (its id inside the request), one response per id with the record's
results, each with its own event time (a transformer may rewrite it), keys and tags."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from pynumaflow.proto.sourcetransformer import transform_pb2, transform_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.convert import epoch_ms, timestamp, to_message
from framework.numaflow.program import NumaflowProgram, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.numaflow.session import Failed, ProgramSession
from framework.numaflow.stream import BidiStream, acknowledges_start
from framework.sdk import Datum, Message

Stream = BidiStream[transform_pb2.SourceTransformRequest, transform_pb2.SourceTransformResponse]
SOCKET = "sourcetransform.sock"


async def open_transform_stream(program: NumaflowProgram, info: ServerInfo) -> Stream:
    stub = transform_pb2_grpc.SourceTransformStub(program.channel(SOCKET))
    stream: Stream = BidiStream(program, stub.SourceTransformFn, lambda r: r.id)
    await stream.open(transform_pb2.SourceTransformRequest(handshake=transform_pb2.Handshake(sot=True)),
                      acknowledges_start)
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

    async def transform(self, datums: list[Datum]) -> list[list[Message] | Failed]:
        return await self.session.batched(self._all, self._one, datums)

    async def _all(self, stream: Stream, datums: list[Datum]) -> list[list[Message]]:
        watermark = timestamp(self._watermark())
        rids = [str(next(self._ids)) for _ in datums]
        responses = await stream.round_trip([(rid, transform_pb2.SourceTransformRequest(
            request=transform_pb2.SourceTransformRequest.Request(
                keys=d.keys, value=d.value, event_time=timestamp(d.event_time_ms), watermark=watermark,
                headers=d.headers, id=rid))) for d, rid in zip(datums, rids)])
        return [[to_message(r.keys, r.value, r.tags, epoch_ms(r.event_time)) for r in resp.results]
                for resp in responses]

    async def _one(self, stream: Stream, d: Datum) -> list[Message]:
        return (await self._all(stream, [d]))[0]

    async def stop(self) -> None:
        await self.session.close()
