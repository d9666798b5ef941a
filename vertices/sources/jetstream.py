"""`jetstream`: reads an existing stream through a durable pull consumer; acks after storing."""

from __future__ import annotations

from nats.js import api
from nats.js.errors import NotFoundError

from framework.buffer import HDR_EVENT_TIME, HDR_KEYS, BufferReader, decode_keys, stream_sequence
from framework.connection import reply_all
from framework.connectors import ConnectorContext, Emit, SourceRecord
from framework.spec import JetStreamSource as Config

BATCH = 500
POLICIES = {"all": api.DeliverPolicy.ALL, "new": api.DeliverPolicy.NEW, "last": api.DeliverPolicy.LAST}


class JetStreamSource:
    def __init__(self, config: Config):
        self.cfg = config

    def consumer_name(self, ctx: ConnectorContext) -> str:
        return self.cfg.consumer or f"nf_{ctx.pipeline}_{ctx.vertex}_src"

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        nc = await ctx.connect(self.cfg.url)
        js = nc.jetstream()
        name = self.consumer_name(ctx)
        try:
            await js.consumer_info(self.cfg.stream, name)
        except NotFoundError:
            await js.add_consumer(self.cfg.stream, api.ConsumerConfig(
                durable_name=name, ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=POLICIES[self.cfg.deliver_policy.value], max_ack_pending=4 * BATCH))
        reader = BufferReader(nc, self.cfg.stream, name, BATCH)
        await reader.start()
        try:
            while not ctx.stopping.is_set():
                msgs = await reader.fetch(1.0)
                if not msgs:
                    continue
                records = []
                for m in msgs:
                    h = dict(m.headers or {})
                    et = h.pop(HDR_EVENT_TIME, None)
                    keys = decode_keys(h.pop(HDR_KEYS, None))
                    user = {k: v for k, v in h.items() if not k.startswith(("Nats-", "Nf-"))}
                    event_ms = int(et) if et else int(m.metadata.timestamp.timestamp() * 1000)
                    offset = f"{self.cfg.stream}:{stream_sequence(m)}"
                    records.append(SourceRecord(m.data, offset, event_ms, keys or None, user or None, offset))
                await emit(records)
                await reply_all(nc, msgs, b"+ACK")
        finally:
            await reader.close()
