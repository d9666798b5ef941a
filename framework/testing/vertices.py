"""The runtime's own vertex workers, run over an in-memory ISB instead of NATS.

Each adapter builds the worker a real vertex process would run (`runtime.worker.worker_for`) and
plugs in what `run()`/`serve()` would have connected: a `MemoryReader` for the vertex's buffer, a
`Router` (the real one) over a `MemoryWriter`, a `MemoryPublisher` for dead letters, and an
in-memory watermark. It then calls the worker's own per-batch code: `SourceWorker.emit` for
records fed in, `process` for map, flatmap, batchMap, mapStream and sinks, `_ingest` /
`_close_ready` / `_publish_watermark` for reduce. So handler calls, retries, ids, tag routing,
drop and dead-letter decisions are the runtime's, not a copy of them.

What is replaced, and why: NATS connections, KV watermarks and partition leases (one process owns
every partition; its watermark comes from the harness's clock, see harness.py), side-input watches
(values set once, from the call), and sink connectors (a recorder takes what reaches a sink; for
the sinks a call names in `call_sinks`, after the real connector took it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.connector import SourceRecord
from framework.isb import buffer as b
from framework.isb.memory import MemoryISB, MemoryPublisher, MemoryReader, MemoryWriter
from framework.runtime.bounded import Threads
from framework.runtime.reduce import Partition
from framework.runtime.routing import Router
from framework.runtime.udf import BatchMapRunner, MapRunner
from framework.runtime.worker import (
    worker_for,
)
from framework.sdk import Datum
from framework.spec import Pipeline, load_handler
from framework.transport.connection import NatsSettings
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
    """Stands in for `PartitionLeases`: recording how far windows closed always succeeds."""

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
        pass


def build_worker(p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None) -> Any:
    """The vertex's real worker, wired to `isb` in place of NATS (no connection is made). Typed
    Any: its attributes are declared with the NATS classes, ours are stand-ins with the same
    methods (until isb/ gives reader, writer and publisher one Protocol each)."""
    w: Any = worker_for(p, vertex, NatsSettings(), base_dir)
    w.tracer = None  # spans belong to a deployment, not to a unit test
    publisher = MemoryPublisher(isb)
    w.publisher = publisher
    writer: Any = MemoryWriter(isb)  # BufferWriter's methods, over memory
    w.router = Router(p, vertex, writer, None)
    w.router.wm = MemoryWatermark()
    w.dlq_subject = b.dlq_subject(p.name, vertex)
    w.loaded = True
    return w


class MemoryVertex:
    """One vertex of the in-memory run: its worker and how to make it take a step."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int]):
        self.name = vertex
        self.p = p
        self.worker: Any = build_worker(p, vertex, isb, base_dir)
        self.isb = isb
        self.input_watermark = input_watermark

    @property
    def output_watermark(self) -> int:
        wm = self.worker.router.wm
        return wm.wm if wm is not None else UNKNOWN

    async def setup(self) -> None:
        pass

    async def step(self) -> bool:
        """Handle what is ready; True when something was read or emitted."""
        return False

    async def teardown(self) -> None:
        pass


class MemorySource(MemoryVertex):
    """A source whose records come from the call: `SourceWorker.emit` stores them (its event-time
    extractor, envelope checks, dead letters, routing and watermark update included)."""

    async def setup(self) -> None:
        w = self.worker
        cfg = w.v.source
        w.event_time_fn = load_handler(cfg.event_time.handler, w.base_dir) if cfg.event_time else None

    async def emit(self, records: list[SourceRecord]) -> None:
        await self.worker.emit(records)

    async def advance(self, wm: int) -> None:
        """Move the source's watermark on (never back), as an idle rule would."""
        await self.worker.router.wm.update(wm)


class MemoryReading(MemoryVertex):
    """map, flatmap, batchMap, mapStream and sinks: the worker's `process` over one read batch,
    then the ack, as `ReadingWorker.serve` does."""

    def __init__(self, p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                 input_watermark: Callable[[], int], call_sink: bool = False):
        super().__init__(p, vertex, isb, base_dir, input_watermark)
        w = self.worker
        self.recorder: Recorder | None = None
        self.call_sink = call_sink
        stream = b.stream_name(self.p.name, self.name)
        w.reader = MemoryReader(self.isb, stream, w.limits.read_batch_size)
        if w.v.sink is not None:
            self.recorder = Recorder()
            w.sink = self.recorder
            w.fallback = None

    async def setup(self) -> None:
        w = self.worker
        if w.v.udf is not None and w.v.udf.kind in ("map", "flatmap", "batchMap"):
            # UdfWorker.setup, on the shared lane
            udf = w.v.udf
            fn = load_handler(udf.handler.handler, w.base_dir)
            bm = udf.batch_map
            w.runner = (BatchMapRunner(fn, bm.max_batch_size, udf.timeout, UDF_THREADS) if bm
                        else MapRunner(fn, udf.timeout, UDF_THREADS))
        elif self.recorder is None:
            await w.setup()  # mapStream: its handler is async, no thread
        elif self.call_sink:
            await w.setup()  # SinkWorker.setup: the sink's connector (and fallback) started, no NATS
            self.recorder.inner = w.sink
            w.sink = self.recorder

    async def step(self) -> bool:
        w = self.worker
        msgs = await w.reader.fetch()
        if not msgs:
            return False
        if await w.process(msgs):
            await w.reader.ack(msgs)
        return True

    async def teardown(self) -> None:
        if self.recorder is None:
            await self.worker.teardown()
        elif self.call_sink:
            self.worker.sink = self.recorder.inner
            await self.worker.teardown()


class MemoryReduce(MemoryVertex):
    """A reduce owning all its partitions: `_ingest` each read batch, then close the windows the
    input watermark has passed (`_close_ready`) and publish the output watermark."""

    async def setup(self) -> None:
        w = self.worker
        cfg = w.v.udf.reduce
        w.cfg = cfg
        w.lateness = int(cfg.allowed_lateness * 1000)
        w.fn = load_handler(cfg.handler, w.base_dir)
        w.threads = REDUCE_THREADS
        w.all_parts = b.partitions(self.p, self.name)
        w.leases = SoleLeases()
        w.parts = {}
        for part in w.all_parts:
            # lease, reader, fetcher: stand-ins for the NATS-backed ones the dataclass is typed with
            reader = MemoryReader(self.isb, b.stream_name(self.p.name, self.name, part), w.limits.read_batch_size)
            stand_ins: tuple[Any, ...] = (SoleLease(), reader, WatermarkFeed(self.input_watermark))
            w.parts[part] = Partition(part, *stand_ins)

    async def step(self) -> bool:
        w = self.worker
        moved = False
        for ps in w.parts.values():
            msgs = await ps.reader.fetch()
            if msgs:
                moved = True
                await w._ingest(ps, msgs)
            before = len(ps.open_windows())
            await w._close_ready(ps)
            moved = moved or len(ps.open_windows()) != before
        await w._publish_watermark()
        return moved

    def open_windows(self) -> int:
        w = self.worker
        return sum(len(ps.open_windows()) for ps in w.parts.values())


def memory_vertex(p: Pipeline, vertex: str, isb: MemoryISB, base_dir: Path | None,
                  input_watermark: Callable[[], int], call_sink: bool = False) -> MemoryVertex:
    """The in-memory stand-in of `vertex`; `call_sink`: a sink whose real connector is written to."""
    v = p.vertex(vertex)
    if v.kind == "source":
        return MemorySource(p, vertex, isb, base_dir, input_watermark)
    if v.udf is not None and v.udf.kind == "reduce":
        return MemoryReduce(p, vertex, isb, base_dir, input_watermark)
    return MemoryReading(p, vertex, isb, base_dir, input_watermark, call_sink)
