"""A vertex running a Numaflow map, batch map or map stream program (`udf.numaflow` without
`reduce`): the ForwardLoop and processors of framework/runtime, with the program's gRPC service
where a Python handler would be called."""

from __future__ import annotations

from nats.aio.msg import Msg

from framework.isb.ports import Reads
from framework.numaflow.launch import launch_for
from framework.numaflow.mapper import NumaflowMap
from framework.numaflow.program import ProgramDied
from framework.runtime.forward import BatchProcessor, ForwardLoop
from framework.runtime.map import MapProcessor
from framework.runtime.map_stream import MapStreamProcessor


class ProgramBacked:
    """What a processor whose UDF is a Numaflow program adds to it: when the program dies (between
    batches or during one), the batch is handed back and the vertex stops (framework/numaflow/program.py)."""

    loop: ForwardLoop
    client: NumaflowMap

    async def read(self, reader: Reads) -> list[Msg]:
        died = self.client.died()
        if died is not None:
            await self.loop.fail_vertex([], str(died))
            return []
        return await reader.fetch(self.loop.rt.limits.read_timeout)

    async def process(self, msgs: list[Msg]) -> bool:
        try:
            return await super().process(msgs)  # type: ignore[misc]  # the processor class after this mixin
        except ProgramDied as exc:
            return await self.loop.fail_vertex(msgs, str(exc))

    async def close(self) -> None:
        await self.client.stop()


class NumaflowMapProcessor(ProgramBacked, MapProcessor):
    """Unary map / flatmap and batch map: MapProcessor with the program as its runner."""

    def __init__(self, loop: ForwardLoop, client: NumaflowMap):
        assert loop.rt.v.udf is not None
        super().__init__(loop, loop.rt.v.udf, client)
        self.client = client


class NumaflowMapStreamProcessor(ProgramBacked, MapStreamProcessor):
    """Map stream: MapStreamProcessor with the program's stream as the async generator."""

    def __init__(self, loop: ForwardLoop, client: NumaflowMap):
        assert loop.rt.v.udf is not None
        super().__init__(loop, loop.rt.v.udf, client.stream)
        self.client = client


async def open_numaflow_map(loop: ForwardLoop) -> BatchProcessor:
    """Start the vertex's program; which processor serves it is what the program says it is."""
    rt = loop.rt
    udf = rt.v.udf
    assert udf is not None and udf.numaflow is not None
    client = NumaflowMap(launch_for(rt.p, rt.v.name, udf.numaflow, "udf.numaflow", rt.base_dir), loop.input_watermark,
                         udf.timeout)
    mode = await client.start()
    if mode == "stream-map":
        return NumaflowMapStreamProcessor(loop, client)
    return NumaflowMapProcessor(loop, client)
