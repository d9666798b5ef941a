"""`nats`: publishes each message on a core NATS subject, envelope headers included."""

from __future__ import annotations

from framework.isb.envelope import envelope_headers
from framework.transport.client import publish_many
from framework.transport.headers import encode_headers
from framework.connector import ConnectorContext, DatumsRejected
from framework.sdk import Datum
from framework.spec.model import NatsSink as Config


class NatsSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        self.nc = await ctx.connect(self.cfg.url)
        self.own = self.nc is not ctx.nc

    async def write(self, datums: list[Datum]) -> None:
        items, never = [], {}
        limit = self.nc.max_payload
        for i, d in enumerate(datums):
            headers = encode_headers(envelope_headers(d.id, d.id, d.event_time_ms, d.keys, dict(d.headers)))
            size = len(headers) + len(d.value)
            if size > limit:  # never writable: out of the batch instead of failing it forever
                never[i] = f"Unpublishable: {size} bytes with headers, over the server's max_payload {limit}"
                continue
            items.append((self.cfg.subject, "", d.value, headers))
        await publish_many(self.nc, items)
        await self.nc.flush()
        if never:
            raise DatumsRejected(never, rest_written=True)

    async def close(self) -> None:
        if self.own:
            await self.nc.drain()
