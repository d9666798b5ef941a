"""`jetstream`: reads an existing stream through a durable pull consumer; acks after storing."""

from __future__ import annotations

from nats.js import api
from nats.js.errors import NotFoundError

from framework.connector import (
    ConnectorContext,
    Emit,
    StreamReader,
    record_from_msg,
    source_consumer_name,
    stream_sequence,
)
from vertices.jetstream.config import JetStreamSourceConfig as Config

BATCH = 500
POLICIES = {"all": api.DeliverPolicy.ALL, "new": api.DeliverPolicy.NEW, "last": api.DeliverPolicy.LAST}


class JetStreamSource:
    def __init__(self, config: Config):
        self.cfg = config

    def consumer_name(self, ctx: ConnectorContext) -> str:
        return self.cfg.consumer or source_consumer_name(ctx.pipeline, ctx.vertex)

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
        reader = StreamReader(nc, self.cfg.stream, name, BATCH)
        await reader.start()
        try:
            while not ctx.stopping.is_set():
                await ctx.until_running()  # paused: fetch nothing, the stream keeps it
                if ctx.stopping.is_set():
                    break
                msgs = await reader.fetch(1.0)
                if not msgs:
                    continue
                # The stream position is the offset; publish time is the event time by default.
                await emit([record_from_msg(m, f"{self.cfg.stream}:{stream_sequence(m)}",
                                            int(m.metadata.timestamp.timestamp() * 1000)) for m in msgs])
                await reader.ack(msgs)
        finally:
            await reader.close()
