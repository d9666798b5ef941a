"""The runtime's own vertex kinds, run over an in-memory ISB instead of NATS.

Each adapter builds the `VertexRuntime` a real vertex process would run (its kind from
`runtime.kinds.kind_for`; a vertex of a fused chain runs here on its own, over in-memory buffers:
fusion changes processes and buffers, not what handlers see or which ids are written) and hands
its kind the `VertexIO` that `VertexRuntime._wire` would have connected, made of the
in-memory ISB (`isb.memory`, implementing `isb.ports`): the real `Router` over a `MemoryWriter`,
the real `DeadLetters` over a `MemoryPublisher`, and an in-memory watermark. Then it drives the
kind's own per-batch code: `SourceKind.emit` for records fed in; a `ForwardLoop` over a
`MemoryReader` with the vertex's `BatchProcessor` (`process`, then the ack) for map, flatmap,
batchMap, mapStream and sinks; a `Reducer` owning every partition (`read_round`,
`publish_watermark`) for reduce. So handler calls, retries, ids, tag routing, drop and
dead-letter decisions are the runtime's, not a copy of them.

What is replaced, and why: NATS connections, KV watermarks and partition leases (one process owns
every partition; its watermark comes from the harness's clock, see harness.py), side-input watches
(values set once, from the call), and sink connectors (a recorder takes what reaches a sink; for
the sinks a call names in `call_sinks`, after the real connector took it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.connector import SourceRecord
from framework.isb import names
from framework.isb.memory import MemoryISB, MemoryPartitionsReader, MemoryPublisher, MemoryReader, MemoryWriter
from framework.runtime.batch_map import BatchMapProcessor
from framework.runtime.bounded import Threads
from framework.runtime.deadletter import DeadLetters
from framework.runtime.forward import BatchProcessor, ForwardLoop
from framework.runtime.kinds import kind_for
from framework.runtime.lifecycle import VertexIO, VertexRuntime
from framework.runtime.map import MapProcessor
from framework.runtime.map_stream import MapStreamProcessor
from framework.runtime.reduce import Reducer
from framework.runtime.reduce_windows import Partition, WindowEmitter
from framework.runtime.routing import Router
from framework.runtime.sink import SinkProcessor
from framework.runtime.source import SourceKind
from framework.sdk import Datum
from framework.spec import Pipeline, load_handler
from framework.transport.settings import NatsSettings
from framework.watermark.marks import UNKNOWN

# Plain handlers of every in-memory run in this process share one thread lane (replaced after a
# call overruns its timeout, as in a vertex): a lane per vertex per run would be left idle after it.
UDF_THREADS = Threads("natsflow-harness-udf")
REDUCE_THREADS = Threads("natsflow-harness-reduce")


class MemoryWatermark:
    """Stands in for `WatermarkPublisher`: the same monotonic `update`, nothing published."""

    def __init__(self) -> None:
        self.wm = UNKNOWN

    async def update(self, wm: int, force: bool = False) -> None:
        self.wm = max(self.wm, wm)

    def wrote(self, target: tuple[str, int], seq: int) -> None:
        pass

    async def close(self) -> None:
        pass


class WatermarkFeed:
    """Stands in for `WatermarkFetcher`: a vertex's input watermark, asked from the harness."""

    def __init__(self, current: Callable[[], int]):
        self._current = current

    def compute(self, processed_seq: int) -> int:
        return self._current()

    async def close(self) -> None:
        pass


@dataclass
class SoleLease:
    """Stands in for a partition lease: one process owns every partition, for good."""

    wm: int = UNKNOWN
    done: int = UNKNOWN
    lost: bool = False
    releasing: bool = False

    def valid(self) -> bool:
        return True


class SoleLeases:
    """Stands in for `PartitionLeases`: recording how far windows closed always succeeds, and
    ownership never changes."""

    def __init__(self) -> None:
        self.changed = asyncio.Event()  # never set
        self.stats: dict[str, int] = {}

    async def record(self, part: int | None, wm: int) -> bool:
        return True


@dataclass
class Recorder:
    """A sink connector that keeps every datum written to it, in order; with `inner` (the sink's
    real connector), it writes there first and keeps what that write accepted."""

    inner: Any = None
    datums: list[Datum] = field(default_factory=list)

    async def write(self, datums: list[Datum]) -> None:
        if self.inner is not None:
            await self.inner.write(datums)
        self.datums.extend(datums)

    async def close(self) -> None:
        if self.inner is not None:
            await self.inner.close()


def wire(p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None) -> tuple[VertexRuntime, VertexIO]:
    """The vertex's real runtime and the IO `VertexRuntime._wire` would connect, over `isb` (no
    connection is made: `nc` and `js` stay None, and no kind driven here asks for them). Typed
    Any where the runtime declares the NATS-backed watermark and lease classes; ours are
    stand-ins with the same methods."""
    rt = VertexRuntime(p, vertex, NatsSettings(), base_dir, kind_for)
    rt.tracer = None  # spans belong to a deployment, not to a unit test
    publisher = MemoryPublisher(isb)
    router = Router(p, vertex, MemoryWriter(isb), publisher)
    wm: Any = MemoryWatermark()
    router.wm = wm
    dead_letters = DeadLetters(publisher, rt.metrics, p.name, vertex, rt.stopping)
    none: Any = None
    io = VertexIO(none, none, publisher, router, dead_letters, none)
    rt.io = io
    rt.loaded = True
    rt.phase.running.set()  # a unit test feeds the pipeline whatever its spec.lifecycle says
    return rt, io


class MemoryVertex:
    """One vertex of the in-memory run: its runtime and how to make it take a step."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int]):
        self.name = vertex
        self.p = p
        self.rt, self.io = wire(p, vertex, isb, base_dir)
        self.isb = isb
        self.input_watermark = input_watermark

    @property
    def output_watermark(self) -> int:
        wm = self.io.router.wm
        return wm.wm if wm is not None else UNKNOWN

    async def setup(self) -> None:
        pass

    async def step(self) -> bool:
        """Handle what is ready; True when something was read or emitted."""
        return False

    async def teardown(self) -> None:
        pass


class MemorySource(MemoryVertex):
    """A source whose records come from the call: `SourceKind.emit` stores them (its event-time
    extractor, envelope checks, dead letters, routing and watermark update included)."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int]):
        super().__init__(p, vertex, isb, base_dir, input_watermark)
        self.kind = SourceKind(self.rt, self.io)

    async def setup(self) -> None:
        cfg = self.kind.cfg
        # SourceKind.serve's first step; the connector it would then run is replaced by the call
        self.kind.event_time_fn = load_handler(cfg.event_time.handler, self.rt.base_dir) if cfg.event_time else None

    async def emit(self, records: list[SourceRecord]) -> None:
        await self.kind.emit(records)

    async def advance(self, wm: int) -> None:
        """Move the source's watermark on (never back), as an idle rule would."""
        await self.kind.wm.update(wm)


class MemoryReading(MemoryVertex):
    """map, flatmap, batchMap, mapStream and sinks: a `ForwardLoop` over the vertex's buffer in
    memory; each step is one turn of `ForwardLoop.serve`: read a batch, `process` it, ack it."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int], call_sink: bool = False):
        super().__init__(p, vertex, isb, base_dir, input_watermark)
        self.recorder: Recorder | None = Recorder() if self.rt.v.sink is not None else None
        self.call_sink = call_sink
        # isb.ports.Reads over MemoryMsg, which is shaped like the nats Msg the runtime is typed with
        streams = [names.stream_name(p.name, vertex, part) for part in p.partitions(vertex)]
        batch = self.rt.limits.read_batch_size
        reader: Any = MemoryReader(isb, streams[0], batch) if len(streams) == 1 else \
            MemoryPartitionsReader(isb, streams, batch)
        self.loop = ForwardLoop(self.rt, self.io, self._open, reader)
        self.processor: BatchProcessor | None = None

    async def _open(self, loop: ForwardLoop) -> BatchProcessor:
        """The vertex's processor as `runtime.worker.kind_for` picks it; plain handlers on the
        harness's shared lane; a sink writing to the recorder (after its real connector, when
        called)."""
        v = self.rt.v
        if self.recorder is not None:
            assert v.sink is not None
            if not self.call_sink:
                return SinkProcessor(loop, v.sink, self.recorder, None)
            processor = await SinkProcessor.open(loop)  # the sink's connector (and fallback) started, no NATS
            self.recorder.inner = processor.sink
            processor.sink = self.recorder
            return processor
        if v.udf is not None and v.udf.kind == "mapStream":
            return await MapStreamProcessor.open(loop)  # its handler is async: no thread
        if v.udf is not None and v.udf.batch_map is not None:
            return await BatchMapProcessor.open(loop, UDF_THREADS)
        return await MapProcessor.open(loop, UDF_THREADS)

    async def setup(self) -> None:
        self.processor = await self._open(self.loop)

    async def step(self) -> bool:
        # The reader's fetch rather than the processor's `read`: a batchMap's read waits up to
        # maxWait for more, and in one process nothing more comes meanwhile.
        assert self.processor is not None
        reader = self.loop.reader
        msgs = await reader.fetch(0.0)
        if not msgs:
            return False
        if await self.processor.process(msgs):
            await reader.ack(msgs)
        return True

    async def teardown(self) -> None:
        if self.processor is not None:
            await self.processor.close()


class MemoryReduce(MemoryVertex):
    """A reduce whose one `Reducer` owns every partition for good: each step is one round of
    `Reducer.run` (read and ingest each partition, close the windows its input watermark has
    passed, publish the output watermark)."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int]):
        super().__init__(p, vertex, isb, base_dir, input_watermark)
        self.reducer: Reducer | None = None

    async def setup(self) -> None:
        rt, io = self.rt, self.io
        udf = rt.v.udf
        assert udf is not None and udf.reduce is not None
        cfg = udf.reduce
        emitter = WindowEmitter(rt.v.name, load_handler(cfg.handler, rt.base_dir), udf.retry, udf.timeout,
                                rt.metrics, rt.tracer)
        emitter.threads = REDUCE_THREADS
        all_parts = self.p.partitions(self.name)
        # kv, leases, lease and fetcher: stand-ins for the NATS-backed ones the runtime is typed with
        stand_in: Any = SoleLeases()
        stand_in_kv: Any = None  # asked only by the lease and watermark classes replaced here
        reducer = Reducer(rt, io, stand_in_kv, cfg, emitter, stand_in, all_parts)
        for part in all_parts:
            reader = MemoryReader(self.isb, names.stream_name(self.p.name, self.name, part),
                                  rt.limits.read_batch_size)
            stand_ins: tuple[Any, ...] = (SoleLease(), reader, WatermarkFeed(self.input_watermark))
            reducer.parts[part] = Partition(part, *stand_ins)
        self.reducer = reducer

    async def step(self) -> bool:
        assert self.reducer is not None
        streams = [self.isb.streams[names.stream_name(self.p.name, self.name, part)] for part in self.reducer.parts]
        before = (sum(len(s.pending) for s in streams), self.open_windows())
        await self.reducer.read_round(0.0)
        await self.reducer.publish_watermark()
        return (sum(len(s.pending) for s in streams), self.open_windows()) != before

    def open_windows(self) -> int:
        assert self.reducer is not None
        return sum(len(ps.open_windows()) for ps in self.reducer.parts.values())


def memory_vertex(p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                  input_watermark: Callable[[], int], call_sink: bool = False) -> MemoryVertex:
    """The in-memory stand-in of `vertex`; `call_sink`: a sink whose real connector is written to."""
    v = p.vertex(vertex)
    if v.kind == "source":
        return MemorySource(p, vertex, isb, base_dir, input_watermark)
    if v.udf is not None and v.udf.kind == "reduce":
        return MemoryReduce(p, vertex, isb, base_dir, input_watermark)
    return MemoryReading(p, vertex, isb, base_dir, input_watermark, call_sink)
