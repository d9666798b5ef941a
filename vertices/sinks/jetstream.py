"""`jetstream`: publishes into a stream (created if missing), waiting for every ack.
The data id becomes the `Nats-Msg-Id`, so a retried batch is deduplicated by the stream."""

from __future__ import annotations

from nats.js import api
from nats.js.errors import NotFoundError

from framework.isb.envelope import envelope_headers
from framework.isb.writer import JetStreamPublisher, OutMessage, Unpublishable
from framework.transport.headers import HeaderError
from framework.connector import ConnectorContext, DatumsRejected, PartialWrite
from framework.sdk import Datum
from framework.spec.model import JetStreamSink as Config


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
        results = await self.publisher.publish(out)
        # Too large for the server or a header it cannot carry: never writable, so out of the batch
        # (to the fallback sink or the dead-letter stream) rather than retried forever.
        never = {i: f"{type(e).__name__}: {e}" for i, e in enumerate(results) if isinstance(e, (Unpublishable, HeaderError))}
        failed = {i: f"{type(e).__name__}: {e}" for i, e in enumerate(results) if e is not None and i not in never}
        if never:
            raise DatumsRejected(never, rest_written=not failed)
        if failed:
            raise PartialWrite(failed)

    async def close(self) -> None:
        await self.publisher.close()
        if self.own:
            await self.nc.drain()
