"""A fused chain (`spec.fuse`, `edges[].fused`) as one process: its first vertex reads as it would
on its own (a source connector, or its buffer), and each later vertex runs in the same process,
fed through an `isb.handoff.Handoff` instead of a buffer. A write of one vertex returns only once
the rest of the chain has handled the batch, down to the last vertex's write to its sink or to
its out-buffers; so the first vertex acks its input (upstream, or in its buffer) only after that
last write. Ids are made by each vertex as when unfused (from its input's `Nats-Msg-Id`), so a
chain that dies mid-batch and is redelivered its input writes the same ids at its end, where the
buffers (or a deduplicating sink) drop them.

Every vertex keeps its own processor, router, dead-letter stream and metrics (labelled with its
name, in the chain's registry); the chain is scaled, traced and reported as its first vertex."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from itertools import pairwise
from pathlib import Path
from typing import cast

from nats.aio.client import Client
from nats.aio.msg import Msg

from framework.isb import names
from framework.isb.handoff import Handoff
from framework.isb.writer import BufferWriter, JetStreamPublisher
from framework.runtime.deadletter import DeadLetters
from framework.runtime.forward import BatchProcessor, ForwardLoop
from framework.runtime.kinds import kind_for, processor_for
from framework.runtime.lifecycle import VertexIO, VertexKind, VertexRuntime
from framework.runtime.routing import Router
from framework.spec import Pipeline
from framework.transport.settings import NatsSettings
from framework.watermark.publisher import WatermarkPublisher


class _Handed:
    """The `Reads` of a vertex inside a chain: nothing to fetch, and acks and naks are the chain's
    first vertex's business (a batch handed back fails the write that handed it)."""

    def __init__(self, stream: str):
        self.stream = stream
        self.consumer = stream

    async def start(self) -> None:
        pass

    async def fetch(self, timeout: float) -> list[Msg]:
        return []

    async def ack(self, msgs: list[Msg]) -> None:
        pass

    async def nak(self, msgs: list[Msg]) -> None:
        pass

    def interrupt(self) -> None:
        pass

    async def close(self) -> None:
        pass


class _StageRuntime(VertexRuntime):
    """The runtime of a vertex inside a chain: never run itself (the chain's process runs), its
    stop and its failure are the chain's, so a stuck handler ends the whole process non-zero."""

    def __init__(self, chain: ChainRuntime, name: str):
        super().__init__(chain.p, name, chain.settings, chain.base_dir, kind_for)
        self.chain = chain
        if self.tracer is not None:  # the chain is traced as one unit, by its first vertex
            self.tracer.shutdown()
            self.tracer = None
        self.stopping, self.phase = chain.stopping, chain.phase

    def stop(self) -> None:
        self.chain.stop()

    def check_stuck(self) -> None:
        self.chain.check_stuck()


class Stage:
    """A vertex of a chain after its first: its processor in a forward loop that never reads, run on
    each batch the previous vertex hands over."""

    def __init__(self, chain: ChainRuntime, io: VertexIO, name: str, router: Router, handoff: Handoff):
        p = chain.p
        rt = _StageRuntime(chain, name)
        rt.nc = io.nc
        rt.metrics = chain.metrics.stage(name, chain.chain)
        dead_letters = DeadLetters(io.publisher, rt.metrics, p.name, name, chain.stopping)
        dead_letters.requests = io.requests
        rt.io = VertexIO(io.nc, io.js, io.publisher, router, dead_letters, io.kv, io.requests)
        self.rt = rt
        self.handoff = handoff
        self.loop = ForwardLoop(rt, rt.io, processor_for(rt.v), reader=_Handed(handoff.stream))
        self.processor: BatchProcessor | None = None

    async def open(self) -> None:
        self.processor = await self.loop.open_processor()
        self.rt.loaded = True
        self.handoff.take = self.take

    async def take(self, msgs: list[Msg]) -> bool:
        """One batch from the previous vertex; True once handled down the chain."""
        assert self.processor is not None
        metrics = self.rt.metrics
        metrics.read.inc(len(msgs))
        metrics.batch_size.observe(len(msgs))
        started = time.perf_counter()
        handled = await self.processor.process(msgs)
        if handled:
            metrics.ack.inc(len(msgs))
        metrics.observe_batch(time.perf_counter() - started)
        return handled

    async def close(self) -> None:
        if self.processor is not None:
            await self.processor.close()


class ChainRuntime(VertexRuntime):
    """The process of a fused chain: the lifecycle of its first vertex (connection, signals, drain,
    readiness, metrics port), with the later vertices wired in behind it."""

    def __init__(self, p: Pipeline, chain: list[str], settings: NatsSettings, base_dir: Path | None):
        super().__init__(p, chain[0], settings, base_dir, FusedChain)
        self.chain = chain
        tail = chain[-1]
        # Its buffers for /readyz and the gauges: its first vertex's own, and its last vertex's out-buffers.
        out = [names.stream_name(p.name, e.to, part) for e in p.out_edges(tail) for part in p.partitions(e.to)]
        self.buffers = (self.buffers[0], out)
        self.metrics = self.metrics.stage(chain[0], chain)
        self.stages: list[Stage] = []

    async def _wire(self, nc: Client) -> VertexIO:
        io = await super()._wire(nc)
        p, chain = self.p, self.chain
        publisher = cast(JetStreamPublisher, io.publisher)
        routers: dict[str, Router] = {}
        handoffs: dict[str, Handoff] = {}
        for name, following in pairwise(chain):
            handoffs[following] = Handoff(names.stream_name(p.name, following), publisher.max_payload)
            routers[name] = Router(p, name, handoffs[following])
        tail = chain[-1]
        routers[tail] = Router(p, tail, BufferWriter(io.js, publisher), publisher)
        if p.out_edges(tail):
            # One watermark for the chain: its first vertex's, published as the last one's promise
            # on the buffers the chain writes (readers find it by their own name).
            assert io.kv is not None
            shared = WatermarkPublisher(io.kv, tail, routers[tail].watermark_targets)
            routers[tail].wm = routers[chain[0]].wm = shared
        else:
            routers[chain[0]].wm = io.router.wm
        self.stages = [Stage(self, io, name, routers[name], handoffs[name]) for name in chain[1:]]
        io.router = routers[chain[0]]
        return io


class FusedChain:
    """The VertexKind of a chain: its first vertex's kind, with the later vertices opened first (the
    last one first) so that no batch is handed to a vertex not yet open."""

    def __init__(self, rt: VertexRuntime, io: VertexIO):
        assert isinstance(rt, ChainRuntime)
        self.rt = rt
        self.head: VertexKind = kind_for(rt, io)

    async def serve(self) -> None:
        try:
            for stage in reversed(self.rt.stages):
                await stage.open()
            await self.head.serve()
        finally:
            for stage in self.rt.stages:
                await stage.close()

    def on_stop(self) -> None:
        self.head.on_stop()

    def on_heartbeat(self) -> bool | Awaitable[bool]:
        return self.head.on_heartbeat()

    def input_watermark(self) -> int | None:
        return self.head.input_watermark()
