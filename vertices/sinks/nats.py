"""`nats`: publishes each message on a core NATS subject, envelope headers included."""

from __future__ import annotations

from framework.buffer import envelope_headers
from framework.connection import publish_many
from framework.connectors import ConnectorContext
from framework.sdk import Datum
from framework.spec import NatsSink as Config


class NatsSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        self.nc = await ctx.connect(self.cfg.url)
        self.own = self.nc is not ctx.nc

    async def write(self, datums: list[Datum]) -> None:
        await publish_many(self.nc, [
            (self.cfg.subject, "", d.value, envelope_headers(d.id, d.id, d.event_time_ms, d.keys, dict(d.headers)))
            for d in datums
        ])
        await self.nc.flush()

    async def close(self) -> None:
        if self.own:
            await self.nc.drain()
