"""`jetstream`: publishes into a stream (created if missing), waiting for every ack.
The data id becomes the `Nats-Msg-Id`, so a retried batch is deduplicated by the stream."""

from __future__ import annotations

from nats.js import api
from nats.js.errors import NotFoundError

from framework.buffer import JetStreamPublisher, OutMessage, envelope_headers
from framework.connectors import ConnectorContext
from framework.sdk import Datum
from framework.spec import JetStreamSink as Config


class JetStreamSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        self.nc = await ctx.connect(self.cfg.url)
        self.own = self.nc is not ctx.nc
        js = self.nc.jetstream()
        try:
            await js.stream_info(self.cfg.stream)
        except NotFoundError:
            await js.add_stream(api.StreamConfig(name=self.cfg.stream, subjects=[self.cfg.subject],
                                                 storage=api.StorageType.FILE))
        self.publisher = JetStreamPublisher(self.nc)
        await self.publisher.start()

    async def write(self, datums: list[Datum]) -> None:
        out = [
            OutMessage(self.cfg.subject, d.value,
                       envelope_headers(d.id, d.id, d.event_time_ms, d.keys, dict(d.headers)))
            for d in datums
        ]
        errors = [e for e in await self.publisher.publish(out) if e is not None]
        if errors:
            raise errors[0]

    async def close(self) -> None:
        await self.publisher.close()
        if self.own:
            await self.nc.drain()
