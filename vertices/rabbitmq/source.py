"""`rabbitmq`: consumes a queue (aio-pika) with manual acks, sent only after the messages are
stored in the first buffer; `prefetch` is the channel's basic.qos, the most unacked deliveries.

RabbitMQ has no offsets, so the msg id comes from the message itself: its `message_id` property
when the publisher set one (then a redelivery after a crash is dropped as a duplicate), else a hash
of its routing key, properties and body (stable across redeliveries, but two identical messages
without a message_id inside the duplicate window are stored once). Publishers should set
message_id. The routing key becomes the message's keys, the AMQP headers its headers, the
`timestamp` property its event time (else the time of receipt).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import AMQPConnectionError, AMQPError

from framework.connector import ConnectorContext, Emit, SourceRecord, linger_fill
from vertices.rabbitmq.config import RabbitMqSourceConfig as Config
from vertices.shared.text import safe_id, upstream_headers

log = logging.getLogger("natsflow.rabbitmq")

LINGER_S = 0.005
CLOSE_S = 5.0
PENDING_EVERY_S = 5.0


def content_id(m: AbstractIncomingMessage) -> str:
    """A digest of what a redelivery keeps unchanged (the delivery tag and redelivered flag change)."""
    props = [m.routing_key, m.correlation_id, m.type, m.app_id, m.user_id, m.content_type,
             m.timestamp.isoformat() if m.timestamp else None]
    h = hashlib.sha256(json.dumps(props, default=str).encode())
    h.update(json.dumps(m.headers or {}, sort_keys=True, default=str).encode())
    h.update(m.body)
    return "sha256-" + h.hexdigest()[:32]


def to_record(queue: str, m: AbstractIncomingMessage) -> SourceRecord:
    data_id = safe_id(m.message_id) if m.message_id else content_id(m)
    event_ms = int(m.timestamp.timestamp() * 1000) if m.timestamp else int(time.time() * 1000)
    keys = [m.routing_key] if m.routing_key else None
    return SourceRecord(m.body, safe_id(f"{queue}:{data_id}"), event_ms, keys,
                        upstream_headers((m.headers or {}).items()), data_id)


class RabbitMqSource:
    def __init__(self, config: Config):
        self.cfg = config

    async def connected(self, ctx: ConnectorContext) -> aio_pika.abc.AbstractRobustConnection | None:
        """A connection, retrying while RabbitMQ cannot be reached (None if told to stop); once
        connected, aio-pika's robust connection reconnects by itself."""
        delay = 0.5
        while not ctx.stopping.is_set():
            try:
                return await aio_pika.connect_robust(self.cfg.url, client_properties={
                    "connection_name": f"natsflow-{ctx.pipeline}-{ctx.vertex}"})
            except (AMQPConnectionError, OSError) as exc:
                log.warning("rabbitmq source %s: cannot connect (%s); retrying in %.1fs", ctx.vertex, exc, delay)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ctx.stopping.wait(), delay)
                delay = min(delay * 2, 10.0)
        return None

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        connection = await self.connected(ctx)
        if connection is None:
            return
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        queue: aio_pika.abc.AbstractQueue | None = None
        tag: str | None = None
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.cfg.prefetch)
            try:
                queue = await channel.get_queue(self.cfg.queue, ensure=True)  # passive: must exist
            except aio_pika.exceptions.ChannelNotFoundEntity:
                raise ValueError(f"source.rabbitmq.queue: queue {self.cfg.queue!r} does not exist") from None
            tag = await queue.consume(inbox.put, no_ack=False)
            probe = await connection.channel()  # a failed passive declare closes its channel
            log.info("rabbitmq source %s: queue %s, prefetch %d", ctx.vertex, self.cfg.queue, self.cfg.prefetch)
            reporter = asyncio.create_task(self.report_pending(ctx, probe))  # runs while emit() waits
            try:
                while not ctx.stopping.is_set():
                    batch = await self.next_batch(inbox)
                    if batch:
                        await emit([to_record(self.cfg.queue, m) for m in batch])
                        await self.ack(batch)
            finally:
                reporter.cancel()
        finally:
            await self.close(connection, queue, tag)

    @staticmethod
    async def close(connection: aio_pika.abc.AbstractRobustConnection, queue: aio_pika.abc.AbstractQueue | None,
                    tag: str | None) -> None:
        """Cancel the consumer and close, for at most CLOSE_S: unacked deliveries go back to the
        queue when the channel closes, so nothing is lost by giving up (e.g. RabbitMQ is down and
        aio-pika would wait for a reconnect first)."""

        async def close() -> None:
            if queue is not None and tag is not None:
                with contextlib.suppress(AMQPError, RuntimeError, asyncio.TimeoutError):
                    await queue.cancel(tag, timeout=CLOSE_S)
            await connection.close()

        task = asyncio.create_task(close())
        # asyncio.wait (not wait_for): do not wait on a close that ignores its cancellation.
        done, _ = await asyncio.wait({task}, timeout=CLOSE_S)
        if task in done:
            with contextlib.suppress(Exception):
                task.result()
        else:
            task.cancel()
            log.warning("rabbitmq source: closing took over %.0fs; left it (unacked messages are requeued)", CLOSE_S)

    async def next_batch(self, inbox: asyncio.Queue[AbstractIncomingMessage]) -> list[AbstractIncomingMessage]:
        try:
            batch = [await asyncio.wait_for(inbox.get(), 0.5)]
        except TimeoutError:
            return []
        return await linger_fill(inbox, batch, self.cfg.prefetch, LINGER_S)

    async def ack(self, batch: list[AbstractIncomingMessage]) -> None:
        # Delivery tags are per channel and handed out in order: one multiple-ack per channel
        # covers the batch (after a reconnect a batch may span the old and the new channel).
        # Deliveries of a channel that closed meanwhile cannot be acked: RabbitMQ redelivers
        # them and their ids make the copies duplicates that JetStream drops.
        last: dict[int, AbstractIncomingMessage] = {}
        lost = 0
        for m in batch:
            try:
                last[id(m.channel)] = m
            except RuntimeError:  # aio-pika: the delivery's channel is closed
                lost += 1
        for m in last.values():
            try:
                await m.ack(multiple=True)
            except Exception:
                lost += 1
        if lost:
            log.warning("rabbitmq source: acks for a closed channel skipped; RabbitMQ redelivers those messages")

    async def report_pending(self, ctx: ConnectorContext, channel: aio_pika.abc.AbstractChannel) -> None:
        """Export the queue's ready messages (not yet delivered to any consumer) as
        `source_upstream_backlog{state="lag"}` every few seconds: what to scale a RabbitMQ source on."""
        metrics = ctx.metrics
        while True:
            with contextlib.suppress(AMQPError, asyncio.TimeoutError, RuntimeError):
                # On the raw channel: aio-pika's robust channel answers a passive declare from a cache.
                raw = await channel.get_underlay_channel()
                ready = (await asyncio.wait_for(raw.queue_declare(self.cfg.queue, passive=True), 5)).message_count
                if metrics is not None:
                    metrics.upstream_backlog("lag", ready)
                log.debug("rabbitmq source %s: %d messages ready in %s", ctx.vertex, ready, self.cfg.queue)
            await asyncio.sleep(PENDING_EVERY_S)
