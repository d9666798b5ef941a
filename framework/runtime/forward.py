"""The forward loop of a vertex that reads a buffer: read a batch → process it (a map, a batch
map, a map stream or a sink: a BatchProcessor) → route and write → ack.

Inputs are acknowledged only after every output's publish ack, so delivery is at-least-once;
outputs carry deterministic msg ids (`<vertex>:<digest of the input's msg id>:<output index>`),
so a redelivered or re-stored input produces no duplicate downstream within the duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

from nats import errors as nats_errors
from nats.aio.msg import Msg
from opentelemetry.trace import Span

from framework.isb import envelope, names
from framework.isb.ports import Reads
from framework.isb.reader import BufferReader
from framework.runtime.lifecycle import GRACE_S, VertexIO, VertexRuntime
from framework.runtime.ordered import OrderedReader
from framework.runtime.retry import exponential, pause
from framework.sdk import Datum
from framework.spec.ordering import is_ordered
from framework.watermark.fetcher import WatermarkFetcher
from framework.watermark.marks import bucket_name

log = logging.getLogger("natsflow.worker")


class BatchProcessor(Protocol):
    """What a reading vertex does with each batch."""

    async def read(self, reader: Reads) -> list[Msg]:
        """The next batch (empty: nothing came within the read timeout)."""

    async def process(self, msgs: list[Msg]) -> bool:
        """Handle a batch; True when every input may be acked, False when they were nak'ed."""

    async def close(self) -> None:
        """Release the handler or connector."""


ProcessorFactory = Callable[["ForwardLoop"], Awaitable[BatchProcessor]]


def read_batch(rt: VertexRuntime) -> int:
    """readBatchSize; under a rate limit at most a tenth of a second's tokens, so that the
    replicas share each second's tokens in small steps and hold few messages while waiting."""
    rate = rt.limits.rate_limit
    batch = rt.limits.read_batch_size
    return batch if rate is None else max(1, min(batch, rate.max // 10))


def hand_back_after(grace: float) -> float:
    """How long after SIGTERM a batch still in hand (typically waiting at a full buffer) is
    handed back: the grace period less a margin for the nak and the drain (docs/protocol.md §8)."""
    return grace - min(5.0, grace / 4)


class ForwardLoop:
    """The VertexKind of maps, batch maps, map streams and sinks: it owns the reader, the input
    watermark and the current batch's spans; `open` makes the BatchProcessor once the vertex
    may start (side inputs ready). `reader`: another buffer's reader (the in-memory harness's);
    by default the vertex's JetStream consumer."""

    def __init__(self, rt: VertexRuntime, io: VertexIO, open_processor: ProcessorFactory,
                 reader: Reads | None = None):
        self.rt = rt
        self.io = io
        p, v = rt.p, rt.v
        # spec.ordered: partitions read one replica at a time, in stream order (runtime/ordered.py)
        self.ordered = OrderedReader(p, v.name, io.nc, io.js, read_batch(rt), rt.limits.ack_wait, rt.stopping) \
            if reader is None and is_ordered(p, v) else None
        self.reader: Reads = reader if reader is not None else self.ordered or BufferReader(
            io.nc, names.stream_name(p.name, v.name), names.consumer_name(p.name, v.name),
            read_batch(rt), ack_wait=rt.limits.ack_wait)
        self.processed_seq = 0
        self.wm_in: WatermarkFetcher | None = None
        self.spans: dict[int, Span] | None = None  # the current batch's spans by id(msg), when tracing
        self._open = open_processor
        self._hand_back_at: float | None = None  # loop time, set on stop
        self._in_hand: asyncio.Timeout | None = None  # the current batch's deadline

    def on_stop(self) -> None:
        self.reader.interrupt()
        self._hand_back_at = asyncio.get_running_loop().time() + hand_back_after(GRACE_S)
        if self._in_hand is not None:
            self._in_hand.reschedule(self._hand_back_at)

    def on_heartbeat(self) -> bool:
        return False

    def input_watermark(self) -> int | None:
        return self.wm_in.wm if self.wm_in is not None else None

    async def _start_watermark(self) -> None:
        rt, io = self.rt, self.io
        timeout = rt.p.spec.watermark.publisher_timeout
        if self.ordered is not None:
            return  # ordered pipelines carry no watermark (no reduce needs one: docs/ordering.md)
        if io.router.wm is not None:  # a vertex that writes on passes the watermark along
            assert io.kv is not None
            self.wm_in = WatermarkFetcher(io.kv, rt.v.name, 0, timeout)
            await self.wm_in.start()
        elif rt.v.sink is not None:  # a sink only reports its watermark (forwarder_watermark_ms)
            with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):  # no bucket: no watermark
                kv = await io.js.key_value(bucket_name(rt.p.name))
                self.wm_in = WatermarkFetcher(kv, rt.v.name, 0, timeout)
                await self.wm_in.start()

    async def open_processor(self) -> BatchProcessor:
        """The vertex's processor, its handler or connector loaded and started."""
        return await self._open(self)

    async def serve(self) -> None:
        rt, reader, metrics, tracer = self.rt, self.reader, self.rt.metrics, self.rt.tracer
        await self._start_watermark()
        processor = await self.open_processor()
        rt.loaded = True
        await reader.start()
        try:
            while not rt.stopping.is_set():
                msgs = await processor.read(reader)
                if not msgs:
                    await self._idle_watermark()
                    continue
                if rt.rate is not None:  # limits.rateLimit: tokens for the batch, shared by the replicas
                    await rt.rate.acquire(len(msgs))
                started = time.perf_counter()
                metrics.read.inc(len(msgs))
                metrics.batch_size.observe(len(msgs))
                # Spans start before decoding: each input's traceparent becomes this vertex's span.
                self.spans = tracer.start_messages(msgs) if tracer is not None else None
                handled = await self._process(processor, msgs)
                if handled is None:
                    continue
                if handled:
                    await reader.ack(msgs)
                    metrics.ack.inc(len(msgs))
                    await self._pass_watermark(max(envelope.stream_sequence(m) for m in msgs))
                if self.spans and tracer is not None:
                    tracer.end(self.spans.values(), None if handled else "handed back while stopping")
                metrics.observe_batch(time.perf_counter() - started)
                rt.check_stuck()
        finally:
            await reader.close()
            if self.wm_in is not None:
                await self.wm_in.close()
            await processor.close()

    async def _process(self, processor: BatchProcessor, msgs: list[Msg]) -> bool | None:
        """processor.process; None when a NATS outage mid-batch left the inputs unhandled, or when
        the batch was still in hand as the grace period after a stop request ran out."""
        rt = self.rt
        delays: Iterator[float] | None = None
        while True:
            try:
                async with asyncio.timeout(self._hand_back_at) as self._in_hand:
                    return await processor.process(msgs)
            except (TimeoutError, nats_errors.Error) as exc:
                if self._in_hand is not None and self._in_hand.expired():
                    log.warning("vertex %s: stopping, and the batch of %d is still not done %.1fs after the "
                                "stop request (a full buffer, a slow handler); handed back for redelivery",
                                rt.v.name, len(msgs), hand_back_after(GRACE_S))
                    await self._give_back(msgs, "not done within the grace period")
                    return None
                rt.metrics.platform_error(type(exc).__name__)
                if self.ordered is not None and self.ordered.holds(msgs) and not rt.stopping.is_set():
                    # Ordered: the same batch again, in place; a nak would let the partition's next
                    # messages overtake it. The msg ids drop whatever was already written.
                    delays = delays or exponential(0.05, 2.0, 5.0)
                    delay = next(delays)
                    log.warning("vertex %s: batch of %d failed (%s: %s); retrying it in %.2fs to keep its order",
                                rt.v.name, len(msgs), type(exc).__name__, exc, delay)
                    await pause(delay, rt.stopping)
                    continue
                log.warning("vertex %s: batch of %d not acked (%s: %s); it will be redelivered",
                            rt.v.name, len(msgs), type(exc).__name__, exc)
                await self._give_back(msgs, f"not acked ({type(exc).__name__})")
                return None
            finally:
                self._in_hand = None

    async def _give_back(self, msgs: list[Msg], why: str) -> None:
        """Nak the batch (or, if even that fails, let its ack wait run out): it is redelivered, and
        the msg ids drop whatever of its outputs was already written (docs/protocol.md §5, §8)."""
        tracer = self.rt.tracer
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await self.reader.nak(msgs)
        if self.spans and tracer is not None:
            tracer.end(self.spans.values(), f"{why}; redelivered later")

    async def _pass_watermark(self, seq: int) -> None:
        """Our output watermark is our input watermark at what this replica has processed."""
        if self.wm_in is None:
            return
        self.processed_seq = max(self.processed_seq, seq)
        wm = self.wm_in.compute(self.processed_seq)
        if self.io.router.wm is not None:
            await self.io.router.wm.update(wm)

    async def _idle_watermark(self) -> None:
        """Nothing to read: everything up to the consumer's ack floor is processed by some replica
        (whose own watermark covers what it still holds), so ours may move up to there."""
        if self.wm_in is None:
            return
        try:
            info = await self.io.js.consumer_info(self.reader.stream, self.reader.consumer)
        except (TimeoutError, nats_errors.Error):
            return
        await self._pass_watermark(info.ack_floor.stream_seq)

    def decode(self, msgs: list[Msg]) -> tuple[list[tuple[Msg, Datum]], list[tuple[Msg, str]]]:
        """The batch's datums; an input whose envelope is bad is paired with why."""
        good, bad = [], []
        for m in msgs:
            try:
                good.append((m, envelope.decode_datum(m)))
            except (ValueError, TypeError) as exc:
                bad.append((m, f"bad envelope: {exc}"))
        return good, bad

    async def fail_vertex(self, msgs: list[Msg], why: str) -> bool:
        """The vertex cannot go on (runtime/udf.py VertexFailure): hand the batch back (it is
        redelivered; outputs already written are deduplicated by their msg ids) and stop; the
        process exits non-zero with `why` and its supervisor restarts it. Returns False (not acked)."""
        rt = self.rt
        if rt.failure is None:
            rt.failure = why
        rt.stop()
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await self.reader.nak(msgs)
        return False

    async def dead_letter(self, failed: list[tuple[Msg, str]]) -> None:
        """Each input with its error to the dead-letter stream (its span failed)."""
        await self.io.dead_letters.inputs(failed, self.spans)
