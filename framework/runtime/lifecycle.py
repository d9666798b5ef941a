"""The life of one vertex process: connect, wire the buffers, wait for side inputs, serve its
kind (source, map, sink, reduce, …), answer /readyz, stop on a signal with a graceful drain, and
log the stats on exit. What a vertex does with its messages is its kind's business
(runtime/source.py, runtime/forward.py and the modules it drives, runtime/reduce.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from framework.isb import names
from framework.isb.ports import Publishes
from framework.isb.requests import RequestLedger, serving_pipeline
from framework.isb.writer import BufferWriter, JetStreamPublisher
from framework.observability.metrics import BufferProbe, VertexMetrics
from framework.observability.tracing import VertexTracer
from framework.runtime.bounded import too_many_stuck
from framework.runtime.deadletter import DeadLetters
from framework.runtime.phase import PhaseWatch
from framework.runtime.ratelimit import RateLimiter
from framework.runtime.routing import Router, WriteReport
from framework.sideinputs.manager import SideInputWatcher
from framework.spec import Pipeline
from framework.transport.settings import NatsSettings, exit_now
from framework.watermark.marks import bucket_name, provision_bucket
from framework.watermark.publisher import WatermarkPublisher

log = logging.getLogger("natsflow.worker")

GRACE_S = float(os.environ.get("NATSFLOW_GRACE_SECONDS", "30"))


@dataclass
class VertexIO:
    """What a connected vertex reads and writes through."""

    nc: Client
    js: JetStreamContext
    publisher: Publishes
    router: Router
    dead_letters: DeadLetters
    kv: KeyValue | None  # the watermark bucket, for a vertex that writes on (None: a sink)
    requests: RequestLedger | None = None  # a serving pipeline's request ledger


class VertexKind(Protocol):
    """What one kind of vertex does once its process is connected."""

    async def serve(self) -> None:
        """Run until the vertex is asked to stop (set `VertexRuntime.loaded` once the handler or
        connector is ready)."""

    def on_stop(self) -> None:
        """A stop was requested: wake whatever waits for input."""

    def on_heartbeat(self) -> bool | Awaitable[bool]:
        """Called every second by the watermark heartbeat; True to publish right away."""

    def input_watermark(self) -> int | None:
        """The watermark of what this vertex reads (None: it reads no buffer's watermark)."""


KindFactory = Callable[["VertexRuntime", VertexIO], VertexKind]


class VertexRuntime:
    """Shared lifecycle: connect, provisioned names, signals, graceful drain, stats on exit."""

    def __init__(self, p: Pipeline, vertex: str, settings: NatsSettings, base_dir: Path | None,
                 make_kind: KindFactory):
        self.p = p
        self.v = p.vertex(vertex)
        self.limits = p.limits_for(vertex)
        self.settings = settings
        self.base_dir = base_dir
        self.stopping = asyncio.Event()
        self.metrics = VertexMetrics(p.name, vertex)
        source = self.v.kind == "source"
        own = [] if source else [names.stream_name(p.name, vertex, part) for part in p.partitions(vertex)]
        out = [names.stream_name(p.name, e.to, part) for e in p.out_edges(vertex) for part in p.partitions(e.to)]
        self.buffers = (own, out)
        self.tracer = VertexTracer.from_env(p.name, vertex, source, ",".join(out if source else own))
        self.nc: Client | None = None
        self.io: VertexIO | None = None
        self.kind: VertexKind | None = None
        self.probe: BufferProbe | None = None
        self.side_inputs: SideInputWatcher | None = None
        self.phase = PhaseWatch(p, vertex)  # Running or Paused (framework/runtime/phase.py)
        self.rate: RateLimiter | None = None  # limits.rateLimit, shared with the other replicas
        self.loaded = False  # the handler / connector is imported and started
        self.failure: str | None = None  # why the process must exit non-zero once stopped
        self._make_kind = make_kind

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.nc = await self.settings.connect(f"natsflow-{self.p.name}-{self.v.name}", stopping=self.stopping,
                                              on_disconnected=self._nats_down)
        io = await self._wire(self.nc)
        self.io = io
        await self.phase.start(io.js)
        self.rate = await RateLimiter.start(io.js, self.p, self.v.name, self.stopping, self.phase)
        kind = self._make_kind(self, io)
        self.kind = kind
        if io.router.wm is not None:
            io.router.wm.start_heartbeat(kind.on_heartbeat)
        port = os.environ.get("NATSFLOW_METRICS_PORT")
        self.metrics.watch_watermark(self.watermark)
        if port:
            self.probe = BufferProbe(io.js, self.metrics, *self.buffers)
            self.probe.start()
            self.metrics.serve(int(port), ready=self.readiness)
        log.info("vertex %s (%s) started", self.v.name, self.v.kind)
        try:
            if await self._await_side_inputs(io.js):
                await kind.serve()
        finally:
            if self.side_inputs is not None:
                await self.side_inputs.close()
            await self._shutdown(io)
            log.info("vertex %s stopped; stats %s", self.v.name, json.dumps(self.metrics.snapshot()))

    async def _wire(self, nc: Client) -> VertexIO:
        js = nc.jetstream()
        publisher = JetStreamPublisher(nc)
        await publisher.start()
        router = Router(self.p, self.v.name, BufferWriter(js, publisher), publisher, archive=True)
        kv = None
        if self.p.out_edges(self.v.name):  # every source and UDF (validated); never a sink
            await provision_bucket(js, self.p.name, self.p.buffers_for(None))
            kv = await js.key_value(bucket_name(self.p.name))
            router.wm = WatermarkPublisher(kv, self.v.name, router.watermark_targets)
        dead_letters = DeadLetters(publisher, self.metrics, self.p.name, self.v.name, self.stopping)
        ledger = RequestLedger(js, self.p.name) if serving_pipeline(self.p) else None
        dead_letters.requests = ledger
        return VertexIO(nc, js, publisher, router, dead_letters, kv, ledger)

    def readiness(self) -> list[str]:
        """What keeps /readyz from answering 200 (runs in the metrics thread: reads state only)."""
        missing = [] if self.nc is not None and self.nc.is_connected else ["not connected to NATS"]
        if self.stopping.is_set():
            missing.append("stopping")
        side_inputs = self.side_inputs
        if side_inputs is not None and not side_inputs.complete.is_set():
            missing.append("waiting for side inputs")
        elif not self.loaded:
            missing.append("handler not loaded yet")
        if self.probe is not None:
            missing += self.probe.missing
        return missing

    def watermark(self) -> int:
        """Epoch ms (-1 = unknown): a reader's input watermark, else what this vertex publishes."""
        kind, io = self.kind, self.io
        wm_in = kind.input_watermark() if kind is not None else None
        if wm_in is not None:
            return wm_in
        return io.router.wm.wm if io is not None and io.router.wm is not None else -1

    async def _await_side_inputs(self, js: JetStreamContext) -> bool:
        """A vertex listing side inputs reads no message before each has a value (False: stopped
        while waiting); from then on a KV watch keeps `side_input(name)` current."""
        if not self.v.side_inputs:
            return True
        self.side_inputs = await SideInputWatcher.start_for(js, self.p.name, self.v.side_inputs,
                                                            self.p.buffers_for(None))
        return await self.side_inputs.wait_complete(self.stopping)

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        if self.nc is not None and not self.nc.is_connected:
            self._abandon()
        if self.nc is not None:
            log.info("vertex %s: stop requested, draining", self.v.name)
        self.stopping.set()
        if self.kind is not None:
            self.kind.on_stop()

    def check_stuck(self) -> None:
        """Too many handler threads stuck past their timeout: stop (after the batch in hand) and
        exit non-zero, so a fresh process takes over (framework/runtime/bounded.py)."""
        reason = too_many_stuck()
        if reason is not None and self.failure is None:
            self.failure = reason
            log.error("vertex %s: %s", self.v.name, reason)
            self.stop()

    def _nats_down(self) -> None:
        if self.stopping.is_set():  # lost while draining: the drain cannot finish
            self._abandon()

    def _abandon(self) -> None:
        # Without NATS nothing can be acked or handed back: waiting would only delay the stop.
        # JetStream redelivers whatever this process held; sources acked nothing upstream unstored.
        exit_now(0, f"vertex {self.v.name}: stop requested while NATS is unreachable; exiting without draining "
                    "(unacknowledged messages are redelivered)", logging.WARNING)

    def count_writes(self, report: WriteReport) -> None:
        for to, (routed, dropped) in report.per_target.items():
            self.metrics.written(to, routed - dropped)
            self.metrics.dropped("buffer_full", dropped)
        self.metrics.dropped("no_route", report.unrouted)

    async def _shutdown(self, io: VertexIO) -> None:
        await self.phase.close()
        if self.probe is not None:
            await self.probe.close()
        if io.router.wm is not None:
            await io.router.wm.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports the spans still queued
        await io.publisher.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(io.nc.drain(), 10)
