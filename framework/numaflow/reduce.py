"""A Numaflow SDK reducer (`Reducer`) or reduce streamer (`ReduceStreamer`) as the handler of
natsflow's reduce vertex (framework/runtime/reduce.py).

natsflow keeps the windows (assignment, watermark, partitions and leases, lateness, crash safety
by holding the inputs unacked); at a window's close the emitter calls this object once per window
and key, as it calls a Python reduce handler. One `ReduceFn` stream per call: the window opened
with the first datum, the rest appended, the request side closed; every result until the SDK's
EOF for the window is the window's output. A reduce streamer speaks the same service and its
results are taken as they come on that stream. Keeping the stream per (window, key) makes each
result's place (and so its dedup id, `<vertex>:<partition>:<key hash>:<start>:<end>:<i>`) the same
on a replay after a crash.

Failures: the user's code raising is a UdfError with the SDK's text (the emitter retries it under
`udf.retry`, then dead-letters the window's inputs with that text); the SDK exits after it, so the
program is started again first. A program that dies (killed, crashed) is started again and the
window sent again, up to MAX_DEATHS times in a row; then the window fails with ProgramDied.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pynumaflow.proto.reducer import reduce_pb2, reduce_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.convert import timestamp, to_message
from framework.numaflow.program import NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.stream import EXIT_WAIT_S, UDF_ERROR_MARK, UdfError
from framework.sdk import Datum, Message, Window

log = logging.getLogger("natsflow.numaflow")

INFO_FILES = (serverinfo.REDUCER, serverinfo.REDUCE_STREAMER)
SOCKETS = {serverinfo.REDUCER: "reduce.sock", serverinfo.REDUCE_STREAMER: "reducestream.sock"}
SLOT = "slot-0"  # Numaflow names a window's slot; natsflow has one slot per window
MAX_DEATHS = 3


def window_proto(window: Window) -> reduce_pb2.Window:
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(window.start)
    end.FromDatetime(window.end)
    return reduce_pb2.Window(start=start, end=end, slot=SLOT)


class NumaflowReduce:
    """The reduce handler `(keys, datums, window) -> [Message]`, served by the program `launch`
    runs (Numaflow's `reduce.v1.Reduce` service). `start` before the first call, `close` after."""

    def __init__(self, launch: ProgramLaunch):
        self.launch = launch
        self.program: NumaflowProgram | None = None
        self.stub: reduce_pb2_grpc.ReduceStub | None = None
        self.restarts = 0
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        program = await NumaflowProgram.start(self.launch)
        try:
            info = await program.ready(*INFO_FILES)
        except BaseException:
            await program.stop()
            raise
        self.program = program
        self.stub = reduce_pb2_grpc.ReduceStub(program.channel(SOCKETS[info.file]))

    async def close(self) -> None:
        if self.program is not None:
            await self.program.stop()

    async def _restart(self, failed: NumaflowProgram | None) -> None:
        async with self._lock:
            if self.program is not failed:
                return  # another window's call restarted it already
            if failed is not None:
                failed.forget_server_info(*INFO_FILES)  # a sidecar restarts on its own: wait for its new file
                await failed.stop()
            self.restarts += 1
            log.warning("numaflow reducer %r: starting it again (restart %d)", self.launch.label, self.restarts)
            await self.start()

    async def __call__(self, keys: list[str], datums: Iterator[Datum], window: Window) -> list[Message]:
        items = list(datums)  # sent again if the program dies mid-window
        for death in range(MAX_DEATHS + 1):
            program = self.program
            try:
                return await self._reduce(keys, items, window)
            except UdfError:
                await self._restart(program)
                raise
            except ProgramDied as exc:
                if death == MAX_DEATHS:
                    raise
                log.warning("%s; sending window %s-%s of %s again", exc, window.start, window.end, keys)
                await self._restart(program)
        raise AssertionError("unreachable")

    async def _reduce(self, keys: list[str], items: list[Datum], window: Window) -> list[Message]:
        assert self.stub is not None and self.program is not None
        call = self.stub.ReduceFn(self._requests(keys, items, window))
        out: list[Message] = []
        try:
            async for resp in call:
                if resp.EOF:
                    break
                if resp.HasField("result"):
                    r = resp.result
                    out.append(to_message(r.keys, r.value, r.tags))
        except grpc.aio.AioRpcError as exc:
            raise await self._failure(exc) from None
        finally:
            call.cancel()  # after the window's EOF the stream has nothing more for us
        return out

    async def _failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.INTERNAL and UDF_ERROR_MARK in details:
            return UdfError(details)
        program = self.program
        assert program is not None
        try:
            await asyncio.wait_for(program.exited.wait(), EXIT_WAIT_S)
        except TimeoutError:
            return ProgramDied(f"numaflow reducer {self.launch.label!r}: call failed ({exc.code().name}: {details})")
        return program.died(" mid-window")

    @staticmethod
    async def _requests(keys: list[str], items: list[Datum], window: Window) -> AsyncIterator[reduce_pb2.ReduceRequest]:
        # The watermark has passed the window's end when natsflow closes it: the SDK sees that.
        win = window_proto(window)
        wm = timestamp(int(window.end.timestamp() * 1000))
        op = reduce_pb2.ReduceRequest.WindowOperation
        event = op.OPEN
        for d in items:
            payload = reduce_pb2.ReduceRequest.Payload(keys=keys, value=d.value, event_time=timestamp(d.event_time_ms),
                                                       watermark=wm, headers=dict(d.headers))
            yield reduce_pb2.ReduceRequest(payload=payload, operation=op(event=event, windows=[win]))
            event = op.APPEND
