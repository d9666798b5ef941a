"""`kafka`: a consumer group member (aiokafka) that commits offsets only after the records are
stored in the first buffer.

Each record's msg id is `<topic>:<partition>:<offset>`, so records read again after a crash or a
rebalance (their offsets were not committed yet) are dropped by JetStream's duplicate window. The
record key becomes the message's keys, its headers pass through, its timestamp is the event time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError

from framework.connector import ConnectorContext, Emit, SourceRecord
from vertices.kafka.client import client_options
from vertices.kafka.config import KafkaSourceConfig as Config
from vertices.shared.text import header_value, safe_id, upstream_headers

log = logging.getLogger("natsflow.kafka")

BATCH = 500
POLL_MS = 500
LAG_EVERY_S = 5.0
def to_record(m: ConsumerRecord) -> SourceRecord:
    offset = safe_id(f"{m.topic}:{m.partition}:{m.offset}")
    event_ms = m.timestamp if m.timestamp is not None and m.timestamp >= 0 else int(time.time() * 1000)
    keys = [header_value(m.key)] if m.key is not None else None
    return SourceRecord(m.value or b"", offset, event_ms, keys, upstream_headers(m.headers or ()), offset)


class KafkaSource:
    def __init__(self, config: Config):
        self.cfg = config

    def consumer(self, ctx: ConnectorContext) -> AIOKafkaConsumer:
        # Offsets are committed by hand after emit(); a new group starts at the oldest record so
        # nothing published before the first start is skipped (override with auto_offset_reset).
        opts = client_options(self.cfg, AIOKafkaConsumer, "source.kafka", group_id=self.cfg.consumer_group,
                              enable_auto_commit=False, auto_offset_reset="earliest",
                              client_id=f"natsflow-{ctx.pipeline}-{ctx.vertex}")
        return AIOKafkaConsumer(self.cfg.topic, **opts)

    async def started(self, ctx: ConnectorContext) -> AIOKafkaConsumer | None:
        """A started consumer, retrying while the brokers cannot be reached (None if told to stop)."""
        delay = 0.5
        while not ctx.stopping.is_set():
            consumer = self.consumer(ctx)
            try:
                await consumer.start()
                return consumer
            except KafkaConnectionError as exc:
                await consumer.stop()
                log.warning("kafka source %s: %s; retrying in %.1fs", ctx.vertex, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ctx.stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
        return None

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        consumer = await self.started(ctx)
        if consumer is None:
            return
        log.info("kafka source %s: topic %s, group %s", ctx.vertex, self.cfg.topic, self.cfg.consumer_group)
        # Beside the read loop, so the lag is still reported while emit() waits on a full buffer.
        reporter = asyncio.create_task(self.report_lag(ctx, consumer))
        try:
            while not ctx.stopping.is_set():
                batches = await consumer.getmany(timeout_ms=POLL_MS, max_records=BATCH)
                records = [r for rs in batches.values() for r in rs]
                if records:
                    await emit([to_record(r) for r in records])
                    await self.commit(consumer, {tp: rs[-1].offset + 1 for tp, rs in batches.items() if rs})
        finally:
            reporter.cancel()
            with contextlib.suppress(Exception):  # leaving the group must not hang the shutdown
                await asyncio.wait_for(consumer.stop(), 10)

    async def commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> None:
        try:
            await consumer.commit(offsets)
        except (KafkaError, IllegalStateError) as exc:
            # Offsets are cumulative, so the next commit covers this one; if a rebalance took the
            # partitions away, their new owner re-reads from the last commit and the msg ids make
            # those re-reads duplicates that JetStream drops.
            log.warning("kafka commit of %s failed (%s: %s); a later commit or the new owner covers it",
                        offsets, type(exc).__name__, exc)

    async def report_lag(self, ctx: ConnectorContext, consumer: AIOKafkaConsumer) -> None:
        """Export the records not yet read (high watermark minus position, summed over the assigned
        partitions) as `source_upstream_backlog{state="lag"}` every few seconds: what to scale a
        Kafka source on. The high watermark comes with fetch responses, so it costs no request."""
        metrics = ctx.metrics
        while True:
            lag = {}
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                try:
                    pos = await consumer.position(tp)
                except (KafkaError, IllegalStateError):
                    continue
                if high is not None:
                    lag[tp.partition] = max(0, high - pos)
            if metrics is not None:
                metrics.upstream_backlog("lag", sum(lag.values()))
            log.debug("kafka source %s: lag per partition %s", ctx.vertex, lag)
            await asyncio.sleep(LAG_EVERY_S)
