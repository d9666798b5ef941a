"""The source vertex: a connector reads from outside and emits records; each is written into the
first buffer(s) before the connector acks it upstream. The source's watermark follows its
records' event times, and moves on by the idle rule when no data comes. While the pipeline is
paused (framework/runtime/phase.py) `emit` stores nothing and `try_emit` refuses."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nats import errors as nats_errors

from framework.connector import (
    BufferFull,
    ConnectorContext,
    RecordRejected,
    SourceRecord,
    load_connector,
)
from framework.runtime.lifecycle import VertexIO, VertexRuntime
from framework.runtime.routing import Outgoing, describe, source_msg_id
from framework.sdk import Datum
from framework.spec import load_handler
from framework.spec.settings import IdleSource
from framework.watermark.publisher import WatermarkPublisher, published

log = logging.getLogger("natsflow.worker")


class SourceKind:
    """The VertexKind of a source: runs its connector with `emit` and `try_emit`."""
    def __init__(self, rt: VertexRuntime, io: VertexIO):
        assert rt.v.source is not None and io.router.wm is not None  # a source always has out-edges
        self.rt = rt
        self.io = io
        self.router = io.router
        self.wm: WatermarkPublisher = io.router.wm
        self.cfg = rt.v.source
        self.event_time_fn: Callable[..., Any] | None = None
        self.idle: IdleSource | None = None
        self._last_emit = 0.0
        self._last_idle_step = 0.0
        self.transformer: Any | None = None  # source.transformer: framework/numaflow/source_transform.py

    def on_stop(self) -> None:
        pass

    def input_watermark(self) -> int | None:
        return None

    async def serve(self) -> None:
        rt, cfg = self.rt, self.cfg
        self.event_time_fn = load_handler(cfg.event_time.handler, rt.base_dir) if cfg.event_time else None
        connector = load_connector("source", cfg.kind, cfg.config)
        ctx = ConnectorContext(rt.p.name, rt.v.name, rt.settings, self.io.nc, rt.stopping,
                               base_dir=rt.base_dir, metrics=rt.metrics, running=rt.phase.running)
        self.idle = rt.p.spec.watermark.idle_rule(cfg.kind)
        self._last_emit = time.monotonic()  # idle from now on, not since the epoch
        await self._resume_watermark()
        if cfg.transformer is not None:
            # Imported here: grpc and the SDK's protos are the optional extra natsflow[numaflow].
            from framework.numaflow.source_transform import RecordTransformer

            self.transformer = RecordTransformer(rt.p, rt.v.name, cfg.transformer, rt.base_dir, lambda: self.wm.wm)
            await self.transformer.start()
        rt.loaded = True
        try:
            await connector.run(ctx, self.emit, self.try_emit)
        finally:
            if self.transformer is not None:
                await self.transformer.stop()

    def _outgoing(self, records: list[SourceRecord], tags: list[frozenset[str]] | None = None) -> list[Outgoing]:
        no_tags: frozenset[str] = frozenset()
        vertex = self.rt.v.name
        return [
            Outgoing(source_msg_id(vertex, r.offset), r.id or r.offset, r.value, r.event_time_ms, r.keys,
                     r.headers, tags[i] if tags is not None else no_tags)
            for i, r in enumerate(records)
        ]

    def assign_event_times(self, records: list[SourceRecord]) -> None:
        """Run the source's `eventTime` extractor: `fn(keys, datum) -> datetime | epoch ms`.
        A record it fails on keeps the source's own event time; the failure is counted and logged."""
        fn = self.event_time_fn
        if fn is None:
            return
        for r in records:
            try:
                t = fn(r.keys or [], Datum(r.keys or [], r.value, headers=r.headers, id=r.id or r.offset,
                                           event_time_ms=r.event_time_ms))
                r.event_time_ms = int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)
            except Exception as exc:
                self.rt.metrics.error.inc(1)
                log.warning("vertex %s: eventTime extractor failed for %s (%s: %s); kept the source's time",
                            self.rt.v.name, r.offset, type(exc).__name__, exc)

    async def emit(self, records: list[SourceRecord]) -> None:
        if not self.rt.phase.running.is_set():
            # Paused: store nothing more (one flag per batch). The records stay unacknowledged
            # upstream until the pipeline resumes; on a stop meanwhile they are stored now, as
            # the drain of a stopping source stores what it holds.
            await self.rt.phase.wait_running(self.rt.stopping)
        if self.rt.rate is not None:  # limits.rateLimit, shared with the other replicas
            await self.rt.rate.acquire(len(records))
        metrics = self.rt.metrics
        metrics.read.inc(len(records))
        metrics.batch_size.observe(len(records))
        self.assign_event_times(records)
        tags: list[frozenset[str]] | None = None
        if self.transformer is not None:
            records, tags, failed = await self.transformer.apply(records)
            if failed:
                await self.io.dead_letters.records(failed)
        if self.rt.tracer is None:
            await self._store(records, tags)
        else:
            await self._traced_write(records, tags)
        if records:
            self._last_emit = time.monotonic()
            wm_cfg = self.rt.p.spec.watermark
            await self.wm.update(min(r.event_time_ms for r in records) - int(wm_cfg.max_delay * 1000))

    async def _traced_write(self, records: list[SourceRecord], tags: list[frozenset[str]] | None) -> None:
        """A span per record, child of its incoming `traceparent` (HTTP header or message header),
        ending once the record is stored; the record carries the span's context downstream."""
        tracer = self.rt.tracer
        assert tracer is not None
        spans = []
        for r in records:
            if r.headers is None:
                r.headers = {}
            span = tracer.start(r.headers, r.id or r.offset)
            if span is not None:
                spans.append(span)
        try:
            await self._store(records, tags)
        except BaseException as exc:
            tracer.end(spans, f"{type(exc).__name__}: {exc}")
            raise
        tracer.end(spans)

    async def _store(self, records: list[SourceRecord], tags: list[frozenset[str]] | None = None) -> None:
        """Write the records into the first buffer(s); one the server cannot take goes to the
        source's dead-letter stream instead, so it is acked upstream like the rest rather than
        re-read and refused forever."""
        ok, bad = [], []
        for r, item in zip(records, self._outgoing(records, tags)):
            problem = self.router.prepare(item)
            if problem is None:
                ok.append(item)
            else:
                bad.append((r, describe(f"record {r.offset}", problem)))
        if bad:
            await self.io.dead_letters.records(bad)
        self.rt.count_writes(await self.router.write(ok))

    async def on_heartbeat(self) -> bool:
        """An idle source moves its watermark on by `incrementBy` every `threshold` (the idle
        rule: `idleSource`, or the default of live sources), so windows downstream close even
        when no data comes. One that has none yet picks it up from its vertex's other replicas."""
        idle = self.idle
        if idle is None:
            return False
        now = time.monotonic()
        if now - self._last_emit < idle.threshold or now - self._last_idle_step < idle.threshold:
            return False
        self._last_idle_step = now
        if self.wm.wm < 0:
            return await self._resume_watermark()
        self.wm.wm += int(idle.increment_by * 1000)
        return True

    async def _resume_watermark(self) -> bool:
        """A source with an idle rule starts from the highest watermark its vertex published
        before (a previous run, a replica that died, a sibling replica), moved on by the rule for
        the time since: it took no input meanwhile. Without this a restarted source's watermark
        stays unknown until input comes, and windows held over from before the restart never close."""
        idle = self.idle
        if idle is None or self.io.kv is None:
            return False
        try:
            entries = await published(self.io.kv, self.rt.v.name)
        except (TimeoutError, nats_errors.Error) as exc:
            log.warning("vertex %s: cannot read its earlier watermarks (%s)", self.rt.v.name, exc)
            return False
        now_ms = int(time.time() * 1000)
        step_ms = int(idle.increment_by * 1000)
        resumed = max((e["wm"] + int(max(0, now_ms - e["ts"]) / 1000 // idle.threshold) * step_ms
                       for e in entries if e.get("wm", -1) >= 0), default=-1)
        if resumed <= self.wm.wm:
            return False
        self.wm.wm = resumed
        log.info("vertex %s: watermark resumed at %d from what its vertex published before", self.rt.v.name, resumed)
        return True

    async def try_emit(self, records: list[SourceRecord]) -> None:
        if not self.rt.phase.running.is_set():  # the caller answers its client at once: refuse, it retries later
            self.rt.metrics.dropped("paused_rejected", len(records))
            raise BufferFull(f"pipeline {self.rt.p.name!r} is paused")
        for r in records:  # the caller answers its client at once (HTTP): refuse rather than dead-letter
            problem = self.router.prepare(self._outgoing([r])[0])
            if problem is not None:
                raise RecordRejected(describe(f"record {r.offset}", problem))
        full = await self.router.full_target(len(records))
        if full is not None:
            self.rt.metrics.dropped("buffer_full_rejected", len(records))
            raise BufferFull(f"buffer of vertex {full!r} is full")
        await self.emit(records)
