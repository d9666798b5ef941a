"""`kafka`: produces each message to a topic (aiokafka) and returns only when every record is
acknowledged by the brokers; the records that were not are retried by the sink worker, so nothing
is lost. A record larger than the producer's `max_request_size` can never be written: it goes to
the fallback sink or the dead-letter stream and the rest of the batch is written.

Kafka has no publish-side dedup across producer sessions: a batch retried after an error or a crash
can be written twice. Every record carries the message's id in the `Nf-Id` header so a consumer can
drop those copies. `setKey: true` makes the message's keys, joined by ':', the record key.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from framework.connector import ConnectorContext, DatumsRejected, PartialWrite
from framework.isb.envelope import HDR_ID
from framework.sdk import Datum
from vertices.kafka.client import client_options
from vertices.kafka.config import KafkaSinkConfig as Config


class KafkaSink:
    def __init__(self, config: Config):
        self.cfg = config
        self.producer: AIOKafkaProducer | None = None

    async def start(self, ctx: ConnectorContext) -> None:
        # Validate the options now; connect on the first write so that brokers that are down at
        # start-up only delay the sink (its writes are retried) instead of ending the process.
        self.opts = client_options(self.cfg, AIOKafkaProducer, "sink.kafka", acks="all",
                                   client_id=f"natsflow-{ctx.pipeline}-{ctx.vertex}")

    async def connected(self) -> AIOKafkaProducer:
        if self.producer is None:
            producer = AIOKafkaProducer(**self.opts)
            try:
                await producer.start()
            except BaseException:
                await producer.stop()
                raise
            self.producer = producer
        return self.producer

    def key(self, d: Datum) -> bytes | None:
        return ":".join(d.keys).encode() if self.cfg.set_key and d.keys else None

    async def write(self, datums: list[Datum]) -> None:
        producer = await self.connected()
        pending: dict[int, asyncio.Future] = {}
        refused: dict[int, str] = {}
        for i, d in enumerate(datums):
            headers = [(k, v.encode()) for k, v in (d.headers or {}).items()] + [(HDR_ID, d.id.encode())]
            try:
                # send() only queues the record; the futures settle when the brokers acknowledge.
                pending[i] = await producer.send(self.cfg.topic, d.value, key=self.key(d), headers=headers,
                                                 timestamp_ms=d.event_time_ms)
            except MessageSizeTooLargeError as exc:  # can never be written: dead-letter it, send the rest
                refused[i] = f"{type(exc).__name__}: {exc}"
        results = await asyncio.gather(*pending.values(), return_exceptions=True)
        failed = {i: f"{type(r).__name__}: {r}" for i, r in zip(pending, results, strict=True)
                  if isinstance(r, BaseException)}
        if failed:  # retry only what the brokers did not acknowledge (refusals get their turn next)
            if len(failed) == len(datums):
                raise next(r for r in results if isinstance(r, BaseException))
            raise PartialWrite({**failed, **refused})
        if refused:
            raise DatumsRejected(refused, rest_written=True)

    async def close(self) -> None:
        if self.producer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.producer.stop(), 10)
