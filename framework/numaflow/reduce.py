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
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from pynumaflow.proto.reducer import reduce_pb2, reduce_pb2_grpc

from framework.numaflow import serverinfo
from framework.numaflow.messages import NumaflowError, from_sdk, timestamp
from framework.numaflow.serverinfo import ServerInfo
from framework.sdk import Datum, Message, Window


def socket_of(info: ServerInfo) -> str:
    """The socket a reducer or reduce streamer serves on, by the server-info file it wrote."""
    return "reducestream.sock" if info.file == serverinfo.REDUCE_STREAMER else "reduce.sock"


# Numaflow names a window's slot; natsflow has one slot per window.
SLOT = "slot-0"


def window_proto(window: Window) -> reduce_pb2.Window:
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(window.start)
    end.FromDatetime(window.end)
    return reduce_pb2.Window(start=start, end=end, slot=SLOT)


class NumaflowReduce:
    """The reduce handler `(keys, datums, window) -> [Message]` served by the SDK program behind
    `channel` (Numaflow's `reduce.v1.Reduce` service)."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = reduce_pb2_grpc.ReduceStub(channel)

    async def __call__(self, keys: list[str], datums: Iterator[Datum], window: Window) -> list[Message]:
        call = self.stub.ReduceFn(self._requests(keys, datums, window_proto(window), window))
        out: list[Message] = []
        try:
            async for resp in call:
                if resp.EOF:
                    break
                if resp.HasField("result"):
                    r = resp.result
                    out.append(from_sdk(r.value, list(r.keys), list(r.tags)))
        except grpc.aio.AioRpcError as exc:
            raise NumaflowError.of(exc) from None
        finally:
            call.cancel()  # after the EOF the stream has nothing more for us
        return out

    @staticmethod
    async def _requests(keys: list[str], datums: Iterator[Datum], win: reduce_pb2.Window,
                        window: Window) -> AsyncIterator[reduce_pb2.ReduceRequest]:
        # The watermark has passed the window's end when natsflow closes it: the SDK sees that.
        wm = timestamp(int(window.end.timestamp() * 1000))
        op = reduce_pb2.ReduceRequest.WindowOperation
        event = op.OPEN
        for d in datums:
            payload = reduce_pb2.ReduceRequest.Payload(keys=keys, value=d.value, event_time=timestamp(d.event_time_ms),
                                                       watermark=wm, headers=dict(d.headers))
            yield reduce_pb2.ReduceRequest(payload=payload, operation=op(event=event, windows=[win]))
            event = op.APPEND
