"""A Numaflow SDK side-input retriever (`SideInput`) as the function the side-input manager runs
on its trigger (framework/sideinputs/manager.py): each run is one `RetrieveSideInput` call. A
response with `no_broadcast` means "no new value" (the previous one stays in force), as a Python
handler returning None does. An SDK error fails the run with the SDK's text (the previous value
stays); the SDK exits after it, and the next run starts the program again first."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import grpc
from google.protobuf import empty_pb2
from pynumaflow.proto.sideinput import sideinput_pb2_grpc

from framework.numaflow import launch, serverinfo
from framework.numaflow.program import NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.stream import UDF_ERROR_MARK, UdfError
from framework.spec.secrets import resolve
from framework.spec.sideinput import SideInput

log = logging.getLogger("natsflow.numaflow")

SOCKET = "sideinput.sock"


def side_input_launch(pipeline: str, index: int, si: SideInput, base_dir: Path | None) -> ProgramLaunch:
    """How to run `spec.sideInputs[index]`'s program (it runs in the pipeline file's folder)."""
    assert si.numaflow is not None
    where = f"spec.sideInputs[{index}].numaflow"
    if not si.numaflow.command and not os.environ.get(launch.SIDECARS_ENV):
        raise SystemExit(f"{where}.command: side input {si.name!r} has only a container, which runs when rendered "
                         "for Kubernetes; add a command to run it on this machine")
    env = {k: resolve(v, f"{where}.env.{k}") for k, v in si.numaflow.env.items()}
    return launch.launch_of(si.numaflow, env, base_dir, pipeline, si.name)


class NumaflowSideInput:
    """`() -> bytes | None`, served by the program `launch` runs; `close` stops it."""

    def __init__(self, how: ProgramLaunch):
        self.launch = how
        self.program: NumaflowProgram | None = None
        self.stub: sideinput_pb2_grpc.SideInputStub | None = None
        self.failed = False  # the last call failed: start the program again before the next

    async def start(self) -> None:
        program = await NumaflowProgram.start(self.launch)
        self.program = program
        await program.ready(serverinfo.SIDE_INPUT)
        self.stub = sideinput_pb2_grpc.SideInputStub(program.channel(SOCKET))

    async def close(self) -> None:
        if self.program is not None:
            await self.program.stop()

    async def __call__(self) -> bytes | None:
        if self.program is None or self.failed or self.program.returncode is not None:
            if self.program is not None:
                log.warning("numaflow side input %r failed or exited; starting it again", self.launch.label)
                self.program.forget_server_info(serverinfo.SIDE_INPUT)
                await self.program.stop()
            self.failed = False
            await self.start()
        assert self.stub is not None and self.program is not None
        try:
            resp = await self.stub.RetrieveSideInput(empty_pb2.Empty())
        except grpc.aio.AioRpcError as exc:
            self.failed = True  # the SDK exits after the user's code raised
            details = exc.details() or ""
            if UDF_ERROR_MARK in details:
                raise UdfError(details) from None
            raise ProgramDied(f"numaflow side input {self.launch.label!r}: {exc.code().name}: {details}") from None
        return None if resp.no_broadcast else bytes(resp.value)
