"""The Map service of a Numaflow SDK program (pynumaflow 0.14 / Numaflow 1.4+ shapes): one MapFn
stream per program, opened with a handshake. Unary map: a request per datum, one response per
id with all its results (several = flatmap). Batch map: the batch's requests, then an
end-of-transmission; a response per id, then an end-of-transmission. Map stream: a request per
datum, any number of responses per id, then that id's end-of-transmission."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from pynumaflow.proto.mapper import map_pb2, map_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.convert import timestamp, to_message
from framework.numaflow.program import NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.numaflow.session import ProgramSession
from framework.numaflow.stream import BidiStream, UdfError, acknowledges_start
from framework.runtime.udf import Result
from framework.sdk import Datum, Message

Stream = BidiStream[map_pb2.MapRequest, map_pb2.MapResponse]
END_OF_BATCH = ""  # the id of a batch's end-of-transmission response


async def open_map_stream(program: NumaflowProgram, info: ServerInfo) -> Stream:
    socket = serverinfo.MAP_SOCKETS.get(info.map_mode)
    if socket is None:
        raise serverinfo.IncompatibleProgram(
            f"{program.launch.label!r}: unknown map mode {info.map_mode!r} "
            f"(known: {', '.join(serverinfo.MAP_SOCKETS)})")
    stub = map_pb2_grpc.MapStub(program.channel(socket))
    stream: Stream = BidiStream(program, stub.MapFn, lambda r: r.id)
    await stream.open(map_pb2.MapRequest(handshake=map_pb2.Handshake(sot=True)),
                      acknowledges_start)
    return stream


class NumaflowMap:
    """A map-family program: `run` for unary and batch map (the MapRunner seam of
    runtime/map.py), `stream` for map stream (the handler seam of runtime/map_stream.py)."""

    def __init__(self, launch: ProgramLaunch, watermark: Callable[[], int | None], timeout: float | None = None):
        self.session: ProgramSession[Any] = ProgramSession(launch, (serverinfo.MAPPER,), open_map_stream)
        self._watermark = watermark
        self._ids = itertools.count()
        self._timeout = timeout  # udf.timeout: a call without an answer by then is restarted and tried alone

    async def start(self) -> str:
        """Start the program; its map mode (unary-map, batch-map, stream-map)."""
        info = await self.session.start()
        return info.map_mode

    @property
    def mode(self) -> str:
        assert self.session.info is not None
        return self.session.info.map_mode

    def _request(self, d: Datum, rid: str, watermark: Timestamp | None = None) -> map_pb2.MapRequest:
        return map_pb2.MapRequest(id=rid, request=map_pb2.MapRequest.Request(
            keys=d.keys, value=d.value, event_time=timestamp(d.event_time_ms),
            watermark=watermark or timestamp(self._watermark()), headers=d.headers))

    async def run(self, datums: list[Datum]) -> list[Result]:
        if self.mode == "batch-map":
            return list(await self.session.batched(self._batch, self._batch_of_one, datums, self._timeout))
        return list(await self.session.batched(self._unary_all, self._unary, datums, self._timeout))

    async def _unary_all(self, stream: Stream, datums: list[Datum]) -> list[list[Message]]:
        """The batch's requests at once, then their responses: the common case, one await per input."""
        watermark = timestamp(self._watermark())
        rids = [str(next(self._ids)) for _ in datums]
        responses = await stream.round_trip([(rid, self._request(d, rid, watermark)) for d, rid in zip(datums, rids)])
        return [[to_message(r.keys, r.value, r.tags) for r in resp.results] for resp in responses]

    async def _unary(self, stream: Stream, d: Datum) -> list[Message]:
        return (await self._unary_all(stream, [d]))[0]

    async def _batch(self, stream: Stream, datums: list[Datum]) -> list[Result]:
        rids = [str(next(self._ids)) for _ in datums]
        queues = {rid: stream.expect(rid) for rid in rids}
        end = stream.expect(END_OF_BATCH)
        try:
            for d, rid in zip(datums, rids):
                stream.send(self._request(d, rid))
            stream.send(map_pb2.MapRequest(status=map_pb2.TransmissionStatus(eot=True)))
            while True:
                resp = await end.get()
                if isinstance(resp, BaseException):
                    raise resp
                if resp.HasField("status") and resp.status.eot:
                    break
        finally:
            for rid in rids:
                stream.forget(rid)
            stream.forget(END_OF_BATCH)
        out: list[Result] = []
        for rid in rids:
            q = queues[rid]
            if q.empty():
                out.append(UdfError(f"the batch map returned no response for input {rid} of the batch"))
                continue
            resp = q.get_nowait()
            if isinstance(resp, BaseException):
                raise resp
            out.append([to_message(r.keys, r.value, r.tags) for r in resp.results])
        return out

    async def _batch_of_one(self, stream: Stream, d: Datum) -> Result:
        return (await self._batch(stream, [d]))[0]

    async def _stream_attempt(self, stream: Stream, d: Datum) -> AsyncIterator[Message]:
        rid = str(next(self._ids))
        q = stream.expect(rid)
        try:
            stream.send(self._request(d, rid))
            while True:
                resp = await q.get()
                if isinstance(resp, BaseException):
                    raise resp
                for r in resp.results:
                    yield to_message(r.keys, r.value, r.tags)
                if resp.HasField("status") and resp.status.eot:
                    return
        finally:
            stream.forget(rid)

    async def stream(self, keys: list[str], d: Datum) -> AsyncIterator[Message]:
        """A map stream's outputs for `d`; after a UdfError the input is streamed again alone on
        the restarted program, skipping the outputs already given (the SDK's UDF is assumed
        deterministic, as Numaflow's own redelivery assumes)."""
        session = self.session
        given = 0
        generation = session.generation
        try:
            assert session.stream is not None
            async for m in self._stream_attempt(session.stream, d):
                given += 1
                yield m
            return
        except UdfError:
            await session.recover(generation)
        async with session.solo:
            generation = session.generation
            seen = 0
            try:
                assert session.stream is not None
                async for m in self._stream_attempt(session.stream, d):
                    seen += 1
                    if seen > given:
                        yield m
            except UdfError:
                await session.recover(generation)
                raise

    def died(self) -> ProgramDied | None:
        return self.session.died()

    def close(self) -> None:
        """The Runs seam's close; the program is stopped by `stop`."""

    async def stop(self) -> None:
        await self.session.close()
