"""A Numaflow SDK side-input retriever (`SideInput`) as the function the side-input manager runs
on its trigger (framework/sideinputs/manager.py): each run is one `RetrieveSideInput` call. A
response with `no_broadcast` means "no new value" (the previous one stays in force), as a Python
handler returning None does; an SDK error fails the run with the SDK's text."""

from __future__ import annotations

import grpc
from google.protobuf import empty_pb2
from pynumaflow.proto.sideinput import sideinput_pb2_grpc

from framework.numaflow.messages import NumaflowError

SOCKET = "sideinput.sock"


class NumaflowSideInput:
    """`() -> bytes | None`, served by the SDK program behind `channel`."""

    def __init__(self, channel: grpc.aio.Channel):
        self.stub = sideinput_pb2_grpc.SideInputStub(channel)

    async def __call__(self) -> bytes | None:
        try:
            resp = await self.stub.RetrieveSideInput(empty_pb2.Empty())
        except grpc.aio.AioRpcError as exc:
            raise NumaflowError.of(exc) from None
        return None if resp.no_broadcast else bytes(resp.value)
