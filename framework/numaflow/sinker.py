"""The Sink service of a Numaflow SDK program: one SinkFn stream (handshake first); a batch is its
requests and an end-of-transmission, answered by the results (one per request id: SUCCESS,
FAILURE with the SDK's error text, FALLBACK, ON_SUCCESS with an optional message, SERVE) and an
end-of-transmission. A main, fallback or on-success sink program: each runs with its own socket
folder, so whichever server-info file it writes, natsflow finds it."""

from __future__ import annotations

from dataclasses import dataclass

from pynumaflow.proto.sinker import sink_pb2, sink_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.convert import timestamp
from framework.numaflow.program import NumaflowProgram, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.numaflow.session import ProgramSession
from framework.numaflow.stream import BidiStream, UdfError, acknowledges_start
from framework.sdk import Datum

Stream = BidiStream[sink_pb2.SinkRequest, sink_pb2.SinkResponse]
SINK_FILES = {serverinfo.SINKER: "sink.sock", serverinfo.FALLBACK_SINKER: "fb-sink.sock",
              serverinfo.ON_SUCCESS_SINKER: "ons-sink.sock"}
SUCCESS, FAILURE, FALLBACK, SERVE, ON_SUCCESS = (sink_pb2.SUCCESS, sink_pb2.FAILURE, sink_pb2.FALLBACK,
                                                 sink_pb2.SERVE, sink_pb2.ON_SUCCESS)


@dataclass(frozen=True)
class SinkResult:
    """What the sink said about one datum; `on_success` is (value, keys) of an on-success message."""

    status: int
    error: str = ""
    on_success: tuple[bytes, list[str]] | None = None


async def open_sink_stream(program: NumaflowProgram, info: ServerInfo) -> Stream:
    stub = sink_pb2_grpc.SinkStub(program.channel(SINK_FILES[info.file]))
    stream: Stream = BidiStream(program, stub.SinkFn, lambda r: "")
    await stream.open(sink_pb2.SinkRequest(handshake=sink_pb2.Handshake(sot=True)),
                      acknowledges_start)
    return stream


class NumaflowSink:
    """A sink program: `write` a batch, get a SinkResult per datum. The user's code raising is
    UdfError (the program is restarted first); the program dying is ProgramDied."""

    def __init__(self, launch: ProgramLaunch):
        self.session: ProgramSession[list[SinkResult]] = ProgramSession(launch, tuple(SINK_FILES), open_sink_stream)

    async def start(self) -> None:
        await self.session.start()

    async def write(self, datums: list[Datum]) -> list[SinkResult]:
        session = self.session
        generation = session.generation
        assert session.stream is not None
        try:
            return await self._batch(session.stream, datums)
        except UdfError:
            await session.recover(generation)  # the SDK exits after the user's code raised
            raise

    async def _batch(self, stream: Stream, datums: list[Datum]) -> list[SinkResult]:
        q = stream.expect("")
        results: dict[str, SinkResult] = {}
        try:
            for i, d in enumerate(datums):
                stream.send(sink_pb2.SinkRequest(request=sink_pb2.SinkRequest.Request(
                    keys=d.keys, value=d.value, event_time=timestamp(d.event_time_ms), id=str(i),
                    headers=dict(d.headers))))
            stream.send(sink_pb2.SinkRequest(status=sink_pb2.TransmissionStatus(eot=True)))
            while True:
                resp = await q.get()
                if isinstance(resp, BaseException):
                    raise resp
                for r in resp.results:
                    ons = None
                    if r.HasField("on_success_msg"):
                        ons = (r.on_success_msg.value, list(r.on_success_msg.keys))
                    results[r.id] = SinkResult(r.status, r.err_msg, ons)
                if resp.HasField("status") and resp.status.eot:
                    break
        finally:
            stream.forget("")
        missing = SinkResult(FAILURE, "the sink program returned no result for this datum")
        return [results.get(str(i), missing) for i in range(len(datums))]

    async def stop(self) -> None:
        await self.session.close()
