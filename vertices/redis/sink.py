"""`redis`: appends each message to a Redis stream (XADD) or list (RPUSH), one MULTI/EXEC per
batch: one round trip, and no other client's writes interleave with it. (Redis does not roll a
transaction back, so a command that fails inside it leaves the others applied; the batch is then
retried and those are written again — at-least-once, like a crash between write and ack.)

Stream entries get the fields `value` (the payload), `id` (the data id), `eventTime` (epoch ms),
`keys` (a JSON array, when the message has keys) and one field per header (a fallback's `Nf-Error`
among them). A list gets the payloads only. Redis has no idempotent append, so a batch that is
redelivered after a crash between the write and the ack is appended twice (at-least-once); the
`id` field lets a reader drop such copies.
"""

from __future__ import annotations

import json

import redis.asyncio as aioredis

from framework.connector import ConnectorContext
from framework.sdk import Datum
from vertices.redis.config import RedisSinkConfig as Config


def stream_fields(d: Datum) -> dict[str, bytes | str | int]:
    fields: dict[str, bytes | str | int] = {"value": d.value, "id": d.id, "eventTime": d.event_time_ms}
    if d.keys:
        fields["keys"] = json.dumps(d.keys)
    for k, v in d.headers.items():
        fields.setdefault(k, v)  # a header never overwrites the envelope fields
    return fields


class RedisSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        # Connections are made on first use: a Redis that is down at start is a failing write
        # (retried, backing up the pipeline), not a crashed worker.
        self.r = aioredis.from_url(self.cfg.url, socket_timeout=10, socket_connect_timeout=5)

    async def write(self, datums: list[Datum]) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            if self.cfg.stream is not None:
                for d in datums:
                    pipe.xadd(self.cfg.stream, stream_fields(d), maxlen=self.cfg.max_len, approximate=True)
            else:
                pipe.rpush(self.cfg.list, *[d.value for d in datums])
            await pipe.execute()

    async def close(self) -> None:
        await self.r.aclose()
