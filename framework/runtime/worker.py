"""One vertex as one process: read a batch → call the UDF or sink → route by tags → write → ack.

Inputs are acknowledged only after every output's publish ack, so delivery is at-least-once;
outputs carry deterministic msg ids (`<vertex>:<digest of the input's msg id>:<output index>`),
so a redelivered or re-stored input produces no duplicate downstream within the duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import signal
import time
from datetime import datetime
from pathlib import Path

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from framework.isb import envelope, names
from framework.isb.writer import BufferWriter, JetStreamPublisher, OutMessage
from framework.isb.reader import BufferReader
from framework.runtime.bounded import HandlerTimeout, deadline, too_many_stuck, within
from framework.transport.settings import NatsSettings, exit_now
from framework.connector import (SINKS, SOURCES, BufferFull, ConnectorConfigError, ConnectorContext, DatumsRejected,
                         PartialWrite, RecordRejected, SourceRecord, connector_field_path, load_connector)
from framework.runtime.deadletter import dead_letter_message
from framework.observability.metrics import BufferProbe, VertexMetrics
from framework.runtime.routing import (Outgoing, Router, UnpublishableOutput, WriteReport, as_bytes, describe, message_tags,
                      source_msg_id)
from framework.sdk import Datum, Message
from framework.spec.secrets import check_vertex
from framework.sideinputs.manager import SideInputWatcher
from framework.spec.model import Backoff, OnFailure, Pipeline, Retry, SpecError, load_handler, load_pipeline
from framework.observability.tracing import VertexTracer
from framework.runtime.udf import BatchMapRunner, HandlerResultError, MapRunner
from framework.watermark.marks import WatermarkFetcher, WatermarkPublisher, bucket_name, provision_bucket, published

log = logging.getLogger("natsflow.worker")

GRACE_S = float(os.environ.get("NATSFLOW_GRACE_SECONDS", "30"))


def backoff_delays(r: Retry):
    delay = r.interval
    for _ in range(r.attempts - 1):
        yield delay
        delay = min(delay * r.factor, r.cap)


class VertexWorker:
    """Shared lifecycle: connect, provisioned names, signals, graceful drain, stats on exit."""

    def __init__(self, p: Pipeline, vertex: str, settings: NatsSettings, base_dir: Path | None = None):
        self.p = p
        self.v = p.vertex(vertex)
        self.limits = p.limits_for(vertex)
        self.settings = settings
        self.base_dir = base_dir
        self.stopping = asyncio.Event()
        self.metrics = VertexMetrics(p.name, vertex)
        self.nc: Client | None = None
        source = self.v.kind == "source"
        own = [] if source else [names.stream_name(p.name, vertex, part) for part in names.partitions(p, vertex)]
        out = [names.stream_name(p.name, e.to, part) for e in p.out_edges(vertex) for part in names.partitions(p, e.to)]
        self.buffers = (own, out)
        self.tracer = VertexTracer.from_env(p.name, vertex, source, ",".join(out if source else own))
        self.probe: BufferProbe | None = None
        self.loaded = False  # the handler / connector is imported and started

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        self.nc = await self.settings.connect(f"natsflow-{self.p.name}-{self.v.name}", stopping=self.stopping,
                                              on_disconnected=self._nats_down)
        self.js = self.nc.jetstream()
        self.publisher = JetStreamPublisher(self.nc)
        await self.publisher.start()
        self.router = Router(self.p, self.v.name, BufferWriter(self.js, self.publisher), self.publisher)
        if self.p.out_edges(self.v.name):  # every source and UDF (validated); never a sink
            await provision_bucket(self.js, self.p.name, self.p.buffers_for(None))
            self.kv = await self.js.key_value(bucket_name(self.p.name))
            self.router.wm = WatermarkPublisher(self.kv, self.v.name, self.router.watermark_targets)
            self.router.wm.start_heartbeat(self.on_heartbeat)
        port = os.environ.get("NATSFLOW_METRICS_PORT")
        self.metrics.watch_watermark(self.watermark)
        if port:
            self.probe = BufferProbe(self.js, self.metrics, *self.buffers)
            self.probe.start()
            self.metrics.serve(int(port), ready=self.readiness)
        log.info("vertex %s (%s) started", self.v.name, self.v.kind)
        try:
            if await self.await_side_inputs():
                await self.serve()
        finally:
            if self.side_inputs is not None:
                await self.side_inputs.close()
            await self.shutdown()
            log.info("vertex %s stopped; stats %s", self.v.name, json.dumps(self.metrics.snapshot()))

    side_inputs: SideInputWatcher | None = None

    def readiness(self) -> list[str]:
        """What keeps /readyz from answering 200 (runs in the metrics thread: reads state only)."""
        missing = [] if self.nc is not None and self.nc.is_connected else ["not connected to NATS"]
        if self.stopping.is_set():
            missing.append("stopping")
        side_inputs = getattr(self, "side_inputs", None)
        if side_inputs is not None and not side_inputs.complete.is_set():
            missing.append("waiting for side inputs")
        elif not self.loaded:
            missing.append("handler not loaded yet")
        if self.probe is not None:
            missing += self.probe.missing
        return missing

    def watermark(self) -> int:
        """Epoch ms (-1 = unknown): a reader's input watermark, else what this vertex publishes."""
        wm_in = getattr(self, "wm_in", None)
        if wm_in is not None:
            return wm_in.wm
        return self.router.wm.wm if self.router.wm is not None else -1

    async def await_side_inputs(self) -> bool:
        """A vertex listing side inputs reads no message before each has a value (False: stopped
        while waiting); from then on a KV watch keeps `side_input(name)` current."""
        if not self.v.side_inputs:
            return True
        self.side_inputs = await SideInputWatcher.start_for(self.js, self.p.name, self.v.side_inputs,
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
        self.on_stop()

    def on_stop(self) -> None:
        pass

    failure: str | None = None  # why the process must exit non-zero once stopped

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

    def on_heartbeat(self) -> bool:
        """Called every second by the watermark heartbeat (may be async); True to publish right away."""
        return False

    async def serve(self) -> None:
        raise NotImplementedError

    def count_writes(self, report: WriteReport) -> None:
        for to, (routed, dropped) in report.per_target.items():
            self.metrics.written(to, routed - dropped)
            self.metrics.dropped("buffer_full", dropped)
        self.metrics.dropped("no_route", report.unrouted)

    async def publish_dead_letters(self, out: list[OutMessage], first_error: str) -> None:
        """Publish until stored (the DLQ is provisioned with the buffers), then count them."""
        total = len(out)
        while True:
            errors = await self.publisher.publish(out)
            retry = [o for o, e in zip(out, errors) if e is not None]
            if not retry:
                break
            first = next(e for e in errors if e)
            if self.stopping.is_set():
                # Leave the batch unacked: it is redelivered to a replica that can reach the DLQ.
                raise nats_errors.Error(f"dead-letter publish failed while stopping: {first}")
            log.warning("dead-letter publish failed for %d messages (%s); retrying", len(retry), first)
            out = retry
            await asyncio.sleep(0.5)
        self.metrics.dlq.inc(total)
        log.warning("vertex %s: %d message(s) sent to dead-letter stream %s; first error: %s",
                    self.v.name, total, names.dlq_stream_name(self.p.name, self.v.name), first_error)

    async def shutdown(self) -> None:
        if self.probe is not None:
            await self.probe.close()
        if self.router.wm is not None:
            await self.router.wm.close()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports the spans still queued
        await self.publisher.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.nc.drain(), 10)


class SourceWorker(VertexWorker):
    async def serve(self) -> None:
        cfg = self.v.source
        self.event_time_fn = load_handler(cfg.event_time.handler, self.base_dir) if cfg.event_time else None
        connector = load_connector(SOURCES, cfg.kind, getattr(cfg, cfg.kind))
        ctx = ConnectorContext(self.p.name, self.v.name, self.settings, self.nc, self.stopping,
                               extra={"base_dir": self.base_dir, "metrics": self.metrics})
        self.dlq_subject = names.dlq_subject(self.p.name, self.v.name)
        self.idle = self.p.spec.watermark.idle_rule(cfg.kind)
        self._last_emit = time.monotonic()  # idle from now on, not since the epoch
        await self._resume_watermark()
        self.loaded = True
        await connector.run(ctx, self.emit, self.try_emit)

    def _outgoing(self, records: list[SourceRecord]) -> list[Outgoing]:
        no_tags: frozenset[str] = frozenset()
        return [
            Outgoing(source_msg_id(self.v.name, r.offset), r.id or r.offset, r.value, r.event_time_ms, r.keys,
                     r.headers, no_tags)
            for r in records
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
            except Exception as exc:  # noqa: BLE001
                self.metrics.error.inc(1)
                log.warning("vertex %s: eventTime extractor failed for %s (%s: %s); kept the source's time",
                            self.v.name, r.offset, type(exc).__name__, exc)

    async def emit(self, records: list[SourceRecord]) -> None:
        self.metrics.read.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        self.assign_event_times(records)
        if self.tracer is None:
            await self._store(records)
        else:
            await self._traced_write(records)
        if records:
            self._last_emit = time.monotonic()
            wm_cfg = self.p.spec.watermark
            await self.router.wm.update(min(r.event_time_ms for r in records) - int(wm_cfg.max_delay * 1000))

    async def _traced_write(self, records: list[SourceRecord]) -> None:
        """A span per record, child of its incoming `traceparent` (HTTP header or message header),
        ending once the record is stored; the record carries the span's context downstream."""
        spans = []
        for r in records:
            if r.headers is None:
                r.headers = {}
            span = self.tracer.start(r.headers, r.id or r.offset)
            if span is not None:
                spans.append(span)
        try:
            await self._store(records)
        except BaseException as exc:
            self.tracer.end(spans, f"{type(exc).__name__}: {exc}")
            raise
        self.tracer.end(spans)

    async def _store(self, records: list[SourceRecord]) -> None:
        """Write the records into the first buffer(s); one the server cannot take goes to the
        source's dead-letter stream instead, so it is acked upstream like the rest rather than
        re-read and refused forever."""
        ok, bad = [], []
        for r, item in zip(records, self._outgoing(records)):
            problem = self.router.prepare(item)
            if problem is None:
                ok.append(item)
            else:
                bad.append((r, describe(f"record {r.offset}", problem)))
        if bad:
            await self.dead_letter_records(bad)
        self.count_writes(await self.router.write(ok))

    async def dead_letter_records(self, bad: list[tuple[SourceRecord, str]]) -> None:
        """Each record as it came (the payload cut to what fits), with `Nf-Error`; `Nats-Msg-Id`
        `dlq:<vertex>:<offset>`, so a record re-read after a crash is dead-lettered once."""
        out = []
        for r, problem in bad:
            headers = envelope.record_headers(r.id or r.offset, r.event_time_ms, r.keys, r.headers)
            out.append(dead_letter_message(self.dlq_subject, names.dlq_msg_id(self.v.name, r.offset), r.value, headers,
                                           f"UnstorableRecord: {problem}", self.v.name, self.publisher.max_payload))
        await self.publish_dead_letters(out, bad[0][1])

    _last_emit = 0.0
    _last_idle_step = 0.0
    idle = None

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
        if self.router.wm.wm < 0:
            return await self._resume_watermark()
        self.router.wm.wm += int(idle.increment_by * 1000)
        return True

    async def _resume_watermark(self) -> bool:
        """A source with an idle rule starts from the highest watermark its vertex published
        before (a previous run, a replica that died, a sibling replica), moved on by the rule for
        the time since: it took no input meanwhile. Without this a restarted source's watermark
        stays unknown until input comes, and windows held over from before the restart never close."""
        idle = self.idle
        if idle is None or self.router.wm is None:
            return False
        try:
            entries = await published(self.kv, self.v.name)
        except (nats_errors.Error, asyncio.TimeoutError) as exc:
            log.warning("vertex %s: cannot read its earlier watermarks (%s)", self.v.name, exc)
            return False
        now_ms = int(time.time() * 1000)
        step_ms = int(idle.increment_by * 1000)
        resumed = max((e["wm"] + int(max(0, now_ms - e["ts"]) / 1000 // idle.threshold) * step_ms
                       for e in entries if e.get("wm", -1) >= 0), default=-1)
        if resumed <= self.router.wm.wm:
            return False
        self.router.wm.wm = resumed
        log.info("vertex %s: watermark resumed at %d from what its vertex published before", self.v.name, resumed)
        return True

    async def try_emit(self, records: list[SourceRecord]) -> None:
        for r in records:  # the caller answers its client at once (HTTP): refuse rather than dead-letter
            problem = self.router.prepare(self._outgoing([r])[0])
            if problem is not None:
                raise RecordRejected(describe(f"record {r.offset}", problem))
        full = await self.router.full_target(len(records))
        if full is not None:
            self.metrics.dropped("buffer_full_rejected", len(records))
            raise BufferFull(f"buffer of vertex {full!r} is full")
        await self.emit(records)


class ReadingWorker(VertexWorker):
    """A vertex that owns a buffer: UDFs and sinks."""

    spans: dict | None = None  # the current batch's spans by id(msg), when tracing

    async def serve(self) -> None:
        stream = names.stream_name(self.p.name, self.v.name)
        self.reader = BufferReader(self.nc, stream, names.consumer_name(self.p.name, self.v.name),
                                     self.limits.read_batch_size, ack_wait=self.limits.ack_wait)
        self.dlq_subject = names.dlq_subject(self.p.name, self.v.name)
        self.processed_seq = 0
        self.wm_in: WatermarkFetcher | None = None
        if self.router.wm is not None:  # a vertex that writes on passes the watermark along
            self.wm_in = WatermarkFetcher(self.kv, self.v.name, 0, self.p.spec.watermark.publisher_timeout)
            await self.wm_in.start()
        elif self.v.sink is not None:  # a sink only reports its watermark (forwarder_watermark_ms)
            with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):  # no bucket: no watermark
                self.kv = await self.js.key_value(bucket_name(self.p.name))
                self.wm_in = WatermarkFetcher(self.kv, self.v.name, 0, self.p.spec.watermark.publisher_timeout)
                await self.wm_in.start()
        await self.setup()
        self.loaded = True
        await self.reader.start()
        try:
            while not self.stopping.is_set():
                msgs = await self.read()
                if not msgs:
                    await self._idle_watermark()
                    continue
                started = time.perf_counter()
                self.metrics.read.inc(len(msgs))
                self.metrics.batch_size.observe(len(msgs))
                # Spans start before decoding: each input's traceparent becomes this vertex's span.
                self.spans = self.tracer.start_messages(msgs) if self.tracer is not None else None
                try:
                    handled = await self.process(msgs)
                except (nats_errors.Error, asyncio.TimeoutError) as exc:
                    # A NATS outage mid-batch: hand the inputs back (or, if even that fails, let
                    # their ack wait run out); the msg ids drop whatever was already written.
                    log.warning("vertex %s: batch of %d not acked (%s: %s); it will be redelivered",
                                self.v.name, len(msgs), type(exc).__name__, exc)
                    with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
                        await self.reader.nak(msgs)
                    self.metrics.platform_error(type(exc).__name__)
                    if self.spans:
                        self.tracer.end(self.spans.values(), f"not acked ({type(exc).__name__}); redelivered later")
                    continue
                if handled:
                    await self.reader.ack(msgs)
                    self.metrics.ack.inc(len(msgs))
                    await self._pass_watermark(max(envelope.stream_sequence(m) for m in msgs))
                if self.spans:
                    self.tracer.end(self.spans.values(), None if handled else "handed back while stopping")
                self.metrics.observe_batch(time.perf_counter() - started)
                self.check_stuck()
        finally:
            await self.reader.close()
            if self.wm_in is not None:
                await self.wm_in.close()
            await self.teardown()

    async def _pass_watermark(self, seq: int) -> None:
        """Our output watermark is our input watermark at what this replica has processed."""
        if self.wm_in is None:
            return
        self.processed_seq = max(self.processed_seq, seq)
        wm = self.wm_in.compute(self.processed_seq)
        if self.router.wm is not None:
            await self.router.wm.update(wm)

    async def _idle_watermark(self) -> None:
        """Nothing to read: everything up to the consumer's ack floor is processed by some replica
        (whose own watermark covers what it still holds), so ours may move up to there."""
        if self.wm_in is None:
            return
        try:
            info = await self.js.consumer_info(self.reader.stream, self.reader.consumer)
        except (nats_errors.Error, asyncio.TimeoutError):
            return
        await self._pass_watermark(info.ack_floor.stream_seq)

    async def read(self) -> list[Msg]:
        return await self.reader.fetch(self.limits.read_timeout)

    def on_stop(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.interrupt()

    async def setup(self) -> None:
        pass

    async def teardown(self) -> None:
        pass

    async def process(self, msgs: list[Msg]) -> bool:
        """Handle a batch; True when every input may be acked, False when they were nak'ed."""
        raise NotImplementedError

    def decode(self, msgs: list[Msg]) -> tuple[list[tuple[Msg, Datum]], list[tuple[Msg, str]]]:
        good, bad = [], []
        for m in msgs:
            try:
                good.append((m, envelope.decode_datum(m)))
            except (ValueError, TypeError) as exc:
                bad.append((m, f"bad envelope: {exc}"))
        return good, bad

    async def dead_letter(self, failed: list[tuple[Msg, str]]) -> None:
        if not failed:
            return
        out = []
        for m, error in failed:
            VertexTracer.fail(self.spans, m, error)
            msg_id = names.dlq_msg_id(self.v.name, envelope.origin(m))
            out.append(dead_letter_message(self.dlq_subject, msg_id, m.data, m.headers, error, self.v.name,
                                           self.publisher.max_payload))
        await self.publish_dead_letters(out, failed[0][1])


class UdfWorker(ReadingWorker):
    """map, flatmap and batchMap: a runner turns a batch of datums into one result per datum."""

    async def setup(self) -> None:
        udf = self.v.udf
        fn = load_handler(udf.handler.handler, self.base_dir)
        bm = udf.batch_map
        self.runner = BatchMapRunner(fn, bm.max_batch_size, udf.timeout) if bm else MapRunner(fn, udf.timeout)

    async def read(self) -> list[Msg]:
        msgs = await self.reader.fetch(self.limits.read_timeout)
        bm = self.v.udf.batch_map
        if bm is None or not msgs:
            return msgs
        # batchMap: give a model batch up to maxWait to fill up before calling it.
        deadline = time.monotonic() + bm.max_wait
        while len(msgs) < bm.max_batch_size and not self.stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msgs += await self.reader.fetch(remaining)
        return msgs

    async def teardown(self) -> None:
        self.runner.close()

    async def process(self, msgs: list[Msg]) -> bool:
        good, failed = self.decode(msgs)
        with self.metrics.udf_time.time():
            results = await self.runner.run([d for _, d in good])
        results = await self._retry(good, results)
        outgoing: list[Outgoing] = []
        prefix = self.v.name + ":"
        tag_dropped = filtered = 0
        for (m, d), res in zip(good, results):
            if isinstance(res, BaseException):
                failed.append((m, f"{type(res).__name__}: {res}"))
                continue
            if not res:
                filtered += 1
                continue
            origin = envelope.origin(m)
            kept = [i for i, out in enumerate(res) if not out.is_drop]
            try:
                mine = [self._outgoing(prefix, origin, i, d, res[i]) for i in kept]
                self.router.check_outputs(mine, kept)
            except (TypeError, UnpublishableOutput) as exc:  # e.g. a value that is not bytes: the input fails
                failed.append((m, f"{type(exc).__name__}: {exc}"))
                continue
            tag_dropped += len(res) - len(mine)
            outgoing.extend(mine)
        self.count_writes(await self.router.write(outgoing))
        self.metrics.dropped("drop_tag", tag_dropped)
        self.metrics.dropped("filtered", filtered)
        await self.dead_letter(failed)
        return True

    @staticmethod
    def _outgoing(prefix: str, origin: str, i: int, d: Datum, out: Message) -> Outgoing:
        headers = d.headers or None
        if out.headers:
            headers = {**d.headers, **out.headers}
        msg_id = f"{prefix}{origin}:{i}"
        return Outgoing(
            msg_id=msg_id,
            # Output 0 keeps the input's id (a map keeps ids end to end); a later output is named
            # by its msg id, unique even when flatmaps are chained or a message cycles.
            data_id=d.id if i == 0 else msg_id,
            value=as_bytes(out.value),
            event_time_ms=int(out.event_time.timestamp() * 1000) if out.event_time else d.event_time_ms,
            keys=d.keys if out.keys is None else list(out.keys),
            headers=headers,
            tags=message_tags(out),
        )

    async def _retry(self, good, results):
        delays = backoff_delays(self.v.udf.retry)
        while True:
            failed_idx = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
            if not failed_idx:
                return results
            self.metrics.error.inc(len(failed_idx))
            # A call that timed out is not tried again: it would most likely hang again.
            failed_idx = [i for i in failed_idx if not isinstance(results[i], HandlerTimeout)]
            if not failed_idx:
                return results
            delay = next(delays, None)
            if delay is None or self.stopping.is_set():
                return results
            await asyncio.sleep(delay)
            again = await self.runner.run([good[i][1] for i in failed_idx])
            results = list(results)
            for i, r in zip(failed_idx, again):
                results[i] = r


class MapStreamWorker(UdfWorker):
    """mapStream: `async def fn(keys, datum)` yields messages; each is written as soon as it is
    produced (in order per input), and the input is acked after its last output is stored."""

    async def setup(self) -> None:
        self.fn = load_handler(self.v.udf.map_stream.handler, self.base_dir)
        if not inspect.isasyncgenfunction(self.fn):
            raise TypeError(f"mapStream handler {self.v.udf.map_stream.handler!r} must be an async generator "
                            "function (async def ... yield Message(...))")

    async def teardown(self) -> None:
        pass

    async def process(self, msgs: list[Msg]) -> bool:
        good, failed = self.decode(msgs)
        with self.metrics.udf_time.time():
            errors = await asyncio.gather(*(self._stream_one(m, d) for m, d in good))
        failed += [(m, f"{type(e).__name__}: {e}") for (m, _), e in zip(good, errors) if e is not None]
        await self.dead_letter(failed)
        return True

    async def _stream_one(self, m: Msg, d: Datum) -> Exception | None:
        prefix, origin = self.v.name + ":", envelope.origin(m)
        delays = backoff_delays(self.v.udf.retry)
        while True:
            try:
                i = 0
                stream = self.fn(d.keys, d)
                while True:
                    try:
                        async with deadline(self.v.udf.timeout):  # each step: a stream may run long
                            out = await anext(stream)
                    except StopAsyncIteration:
                        break
                    if not isinstance(out, Message):
                        raise HandlerResultError(f"mapStream handler yielded {type(out).__name__}; expected Message")
                    if out.is_drop:
                        self.metrics.dropped("drop_tag", 1)
                    else:
                        # Ids depend only on (input, position): a retried stream rewrites the same ids.
                        item = self._outgoing(prefix, origin, i, d, out)
                        self.router.check_outputs([item], [i])
                        self.count_writes(await self.router.write([item]))
                    i += 1
                return None
            except (HandlerTimeout, UnpublishableOutput) as exc:  # final: retrying would fail the same way
                self.metrics.error.inc(1)
                return exc
            except (nats_errors.Error, asyncio.TimeoutError):
                raise
            except Exception as exc:  # noqa: BLE001
                self.metrics.error.inc(1)
                delay = next(delays, None)
                if delay is None or self.stopping.is_set():
                    return exc
                await asyncio.sleep(delay)


class SinkWorker(ReadingWorker):
    """Writes each batch to the sink. A failing write is retried with `retryStrategy.backoff`;
    after `steps` retries `onFailure` decides: `retry` keeps going (the pipeline backs up through
    its buffers, nothing is lost), `fallback` writes the batch to the fallback sink with the error
    in `Nf-Error`, `drop` counts and acks it. Datums a sink rejects as unwritable go to the
    fallback sink, or to the dead-letter stream when there is none."""

    async def setup(self) -> None:
        cfg = self.v.sink
        ctx = ConnectorContext(self.p.name, self.v.name, self.settings, self.nc, self.stopping,
                               extra={"base_dir": self.base_dir})
        self.sink = load_connector(SINKS, cfg.kind, getattr(cfg, cfg.kind))
        await self.sink.start(ctx)
        self.fallback = None
        if cfg.fallback is not None:
            fb = cfg.fallback
            self.fallback = load_connector(SINKS, fb.kind, getattr(fb, fb.kind))
            await self.fallback.start(ctx)

    async def teardown(self) -> None:
        try:
            await self.sink.close()
        finally:
            if self.fallback is not None:
                await self.fallback.close()

    async def process(self, msgs: list[Msg]) -> bool:
        try:
            return await self._write_batch(msgs)
        except _FallbackDown:  # stopping while the fallback fails: all back (at-least-once)
            await self.reader.nak(msgs)
            return False

    async def _write_batch(self, msgs: list[Msg]) -> bool:
        good, failed = self.decode(msgs)
        await self.dead_letter(failed)
        pending = good
        strategy = self.v.sink.retry_strategy
        delays = sink_delays(strategy.backoff)
        retries = 0
        while pending:
            try:
                with self.metrics.sink_time.time():
                    await within(self.sink.write([d for _, d in pending]), self.v.sink.timeout)
                self.metrics.written("sink", len(pending))
                return True
            except DatumsRejected as exc:  # bad datums out, the rest is written again right away
                rejected = [(pending[i], reason) for i, reason in sorted(exc.reasons.items())]
                await self.reject(rejected)
                rest = [md for i, md in enumerate(pending) if i not in exc.reasons]
                if exc.rest_written:
                    self.metrics.written("sink", len(rest))
                    return True
                pending = rest
                continue
            except PartialWrite as exc:  # only what failed is tried again
                self.metrics.error.inc(1)
                self.metrics.written("sink", len(pending) - len(exc.failed))
                pending = [pending[i] for i in sorted(exc.failed)]
                errors = [exc.failed[i] for i in sorted(exc.failed)]
            except Exception as exc:  # noqa: BLE001 - a failing sink backs the pipeline up, never loses data
                self.metrics.error.inc(1)
                errors = [f"{type(exc).__name__}: {exc}"] * len(pending)
                self.check_stuck()  # a hung sink's threads: past the limit, hand the batch back and exit
            error = errors[0]
            if self.stopping.is_set():
                log.warning("sink %s failing while stopping (%s); handing %d messages back",
                            self.v.name, error, len(pending))
                await self._hand_back(msgs, pending)
                return False
            if strategy.on_failure is not OnFailure.retry and retries >= strategy.backoff.steps:
                await self.give_up(pending, errors, strategy.on_failure)
                return True
            delay = next(delays)
            retries += 1
            log.warning("sink %s write of %d failed: %s; retry %d in %.2fs", self.v.name, len(pending),
                        error, retries, delay)
            with contextlib.suppress(asyncio.TimeoutError):  # a stop request ends the wait early
                await asyncio.wait_for(self.stopping.wait(), delay)
        return True

    async def _hand_back(self, msgs: list[Msg], pending: list[tuple[Msg, Datum]]) -> None:
        """While stopping: ack what was handled (written, rejected, dead-lettered), NAK the rest."""
        unhandled = {id(m) for m, _ in pending}
        done = [m for m in msgs if id(m) not in unhandled]
        await self.reader.ack(done)
        self.metrics.ack.inc(len(done))
        await self.reader.nak([m for m, _ in pending])

    async def give_up(self, pending: list[tuple[Msg, Datum]], errors: list[str], on_failure: OnFailure) -> None:
        if on_failure is OnFailure.drop:
            self.metrics.dropped("sink_failure", len(pending))
            log.warning("sink %s: dropped %d message(s) after %d retries; error: %s", self.v.name,
                        len(pending), self.v.sink.retry_strategy.backoff.steps, errors[0])
            return
        await self.reject(list(zip(pending, errors, strict=True)))

    async def reject(self, rejected: list[tuple[tuple[Msg, Datum], str]]) -> None:
        """Datums the sink will not take: to the fallback sink with the error, else dead-lettered."""
        if self.fallback is None:
            await self.dead_letter([(m, error) for (m, _), error in rejected])
            return
        out = [envelope.with_error(d, error, self.v.name) for (_, d), error in rejected]
        delays = sink_delays(self.v.sink.retry_strategy.backoff)
        while True:  # a failing fallback backs the pipeline up like a failing sink with onFailure retry
            try:
                await within(self.fallback.write(out), self.v.sink.timeout)
                break
            except Exception as exc:  # noqa: BLE001
                self.metrics.error.inc(1)
                if self.stopping.is_set():
                    raise _FallbackDown() from exc
                delay = next(delays)
                log.warning("sink %s: fallback write of %d failed: %s: %s; retrying in %.2fs", self.v.name,
                            len(out), type(exc).__name__, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
        self.metrics.fallback.inc(len(out))
        log.warning("sink %s: %d message(s) written to the fallback sink; first error: %s", self.v.name,
                    len(out), rejected[0][1])


class _FallbackDown(Exception):
    pass


def sink_delays(backoff: Backoff):
    """interval, interval×factor, … capped at `cap`, each scaled by a random 1 ± jitter so that
    replicas failing together do not retry in lockstep."""
    delay = backoff.interval
    while True:
        yield delay * (1 + random.uniform(-backoff.jitter, backoff.jitter))
        delay = min(delay * backoff.factor, backoff.cap)


def worker_for(p: Pipeline, vertex: str, settings: NatsSettings, base_dir: Path | None) -> VertexWorker:
    v = p.vertex(vertex)
    cls = {"source": SourceWorker, "udf": UdfWorker, "sink": SinkWorker}[v.kind]
    if v.udf is not None and v.udf.kind == "mapStream":
        cls = MapStreamWorker
    if v.udf is not None and v.udf.kind == "reduce":
        from framework.runtime.reduce import ReduceWorker  # noqa: PLC0415 - it builds on this module

        cls = ReduceWorker
    return cls(p, vertex, settings, base_dir)


async def run_vertex(pipeline_file: str | Path, vertex: str, settings: NatsSettings) -> None:
    path = Path(pipeline_file)
    p = load_pipeline(path, check_handlers=False)
    check_vertex(p, p.vertex(vertex), str(path))  # a missing secret: one clear line, before connecting
    worker = worker_for(p, vertex, settings, path.parent)
    if p.vertex(vertex).udf is not None and p.vertex(vertex).udf.kind == "command":
        raise SystemExit(f"vertex {vertex!r} runs its own command; start it with `natsflow run`")
    try:
        await worker.run()
    except ConnectorConfigError as exc:  # e.g. an HTTP body limit the server cannot carry
        raise SpecError(str(path), [(connector_field_path(p, vertex, exc.field), exc.reason)]) from None
    if worker.failure is not None:
        raise SystemExit(f"vertex {vertex}: {worker.failure}")
