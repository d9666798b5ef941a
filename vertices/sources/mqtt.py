"""`mqtt`: subscribes to a topic filter (aiomqtt, MQTT 3.1.1) in a persistent session and
acknowledges each QoS 1/2 message only after it is stored in the first buffer.

The session (clean_session false, a fixed client id) makes the broker keep what is published while
the source is down and resend what was delivered but not acknowledged, with the same packet id.
MQTT has no offsets: the msg id is `<topic>:<packet id>:<payload digest>`, stable for such a
resend. Two messages are taken for one only if they share topic, payload and packet id inside the
duplicate window, i.e. 65 535 deliveries apart on one session. QoS 0 has no packet id nor resend:
each message gets a random id (at-most-once). With QoS 2 the client answers PUBREC on receipt and
the broker then only resends PUBREL, which carries no payload: a crash after that and before the
store loses the message, so QoS 1 is the safer choice here. The topic becomes the message's keys;
the event time is the time of receipt (MQTT 3.1.1 carries none).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
import uuid
from urllib.parse import unquote, urlsplit

import aiomqtt

from framework.transport.settings import mask_url
from framework.connector import ConnectorContext, Emit, SourceRecord, linger_fill
from framework.spec.model import MqttSource as Config
from vertices.sources._text import safe_id

log = logging.getLogger("natsflow.mqtt")

BATCH = 500
INBOX = 4 * BATCH
LINGER_S = 0.005
RECONNECT_S = 1.0


def record_from(m: aiomqtt.Message) -> SourceRecord:
    topic = m.topic.value
    payload = m.payload if isinstance(m.payload, bytes) else str(m.payload if m.payload is not None else "").encode()
    if m.qos == 0:
        offset = uuid.uuid4().hex
    else:
        offset = safe_id(f"{topic}:{m.mid}:{hashlib.sha256(payload).hexdigest()[:16]}")
    return SourceRecord(payload, offset, int(time.time() * 1000), [topic], None, offset)


class MqttSource:
    def __init__(self, config: Config):
        self.cfg = config
        url = urlsplit(config.url)
        if url.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"source.mqtt.url: scheme must be mqtt:// or mqtts://, got {mask_url(config.url)!r}")
        self.tls = url.scheme in ("mqtts", "ssl")
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (8883 if self.tls else 1883)
        self.username = unquote(url.username) if url.username else None
        self.password = unquote(url.password) if url.password else None

    def client(self, ctx: ConnectorContext) -> aiomqtt.Client:
        client = aiomqtt.Client(
            self.host, self.port, username=self.username, password=self.password,
            identifier=self.cfg.client_id or f"natsflow-{ctx.pipeline}-{ctx.vertex}",
            clean_session=self.cfg.qos == 0,  # QoS 0 is never resent, so it needs no session
            tls_context=ssl.create_default_context() if self.tls else None,
        )
        # paho acknowledges as soon as the message is handed over; we acknowledge after the
        # store instead (aiomqtt does not expose this switch, paho's client is its public core).
        client._client.manual_ack_set(True)  # noqa: SLF001
        return client

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        while not ctx.stopping.is_set():
            try:
                await self.session(ctx, emit)
            except aiomqtt.MqttError as exc:
                # Unacknowledged messages are resent on the next connect, with the same ids.
                log.warning("mqtt source %s: %s; reconnecting in %.0fs", ctx.vertex, exc, RECONNECT_S)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ctx.stopping.wait(), RECONNECT_S)

    async def session(self, ctx: ConnectorContext, emit: Emit) -> None:
        # Bounded, so memory stays bounded while `emit` waits on a full buffer: QoS 1/2 deliveries
        # then wait (the broker's in-flight window stops sending), QoS 0 ones are dropped and counted.
        inbox: asyncio.Queue[aiomqtt.Message] = asyncio.Queue(maxsize=INBOX)
        async with self.client(ctx) as client:
            await client.subscribe(self.cfg.topic, qos=self.cfg.qos)
            log.info("mqtt source %s: subscribed to %s (qos %d)", ctx.vertex, self.cfg.topic, self.cfg.qos)
            reader = asyncio.create_task(self.pump(client, inbox, ctx.extra.get("metrics")))
            try:
                while not ctx.stopping.is_set():
                    batch = await self.next_batch(inbox, reader)
                    if batch:
                        await emit([record_from(m) for m in batch])
                        for m in batch:
                            if m.qos:
                                client._client.ack(m.mid, m.qos)  # noqa: SLF001
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await reader

    @staticmethod
    async def pump(client: aiomqtt.Client, inbox: asyncio.Queue[aiomqtt.Message], metrics=None) -> None:
        async for m in client.messages:
            if m.qos == 0 and inbox.full():
                if metrics is not None:
                    metrics.dropped("qos0_inbox_full", 1)
                continue
            await inbox.put(m)

    @staticmethod
    async def next_batch(inbox: asyncio.Queue[aiomqtt.Message], reader: asyncio.Task) -> list[aiomqtt.Message]:
        if inbox.empty():
            getter = asyncio.ensure_future(inbox.get())
            done, _ = await asyncio.wait({getter, reader}, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done and getter.cancel():  # cancel() is False if it got one meanwhile
                if reader in done:
                    reader.result()  # disconnected: raise its MqttError to reconnect
                return []
            batch = [getter.result()]
        else:
            batch = [inbox.get_nowait()]
        return await linger_fill(inbox, batch, BATCH, LINGER_S)
