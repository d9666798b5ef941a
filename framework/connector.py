"""The two interfaces a built-in or user connector implements, and how a spec names them."""

from __future__ import annotations

import asyncio
import importlib
import time
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from nats.aio.client import Client

from framework.isb.envelope import decode_foreign
from framework.transport.settings import NatsSettings
from framework.spec.secrets import resolved
from framework.sdk import Datum

if TYPE_CHECKING:
    from framework.spec.model import Pipeline

log = logging.getLogger("natsflow.connectors")

SOURCES = {
    "generator": "vertices.sources.generator:GeneratorSource",
    "http": "vertices.sources.http:HttpSource",
    "nats": "vertices.sources.nats:NatsSource",
    "jetstream": "vertices.sources.jetstream:JetStreamSource",
    "kafka": "vertices.sources.kafka:KafkaSource",
    "rabbitmq": "vertices.sources.rabbitmq:RabbitMqSource",
    "mqtt": "vertices.sources.mqtt:MqttSource",
    "redisStreams": "vertices.sources.redis_streams:RedisStreamsSource",
}
SINKS = {
    "log": "vertices.sinks.log:LogSink",
    "blackhole": "vertices.sinks.blackhole:BlackholeSink",
    "nats": "vertices.sinks.nats:NatsSink",
    "jetstream": "vertices.sinks.jetstream:JetStreamSink",
    "udsink": "vertices.sinks.udsink:UserSink",
    "kafka": "vertices.sinks.kafka:KafkaSink",
    "postgres": "vertices.sinks.postgres:PostgresSink",
    "redis": "vertices.sinks.redis:RedisSink",
    "http": "vertices.sinks.http:HttpSink",
}


@dataclass(slots=True)
class SourceRecord:
    """One record read from outside. `offset` must be stable for the same upstream record: it
    becomes the `Nats-Msg-Id`, so a re-read after a crash is deduplicated."""

    value: bytes
    offset: str
    event_time_ms: int
    keys: list[str] | None = None
    headers: dict[str, str] | None = None
    id: str | None = None


def record_from_msg(msg: Any, offset: str, default_event_ms: int) -> SourceRecord:
    """A record from a NATS message that may carry natsflow's envelope headers (keys, event time);
    other `Nats-*`/`Nf-*` headers are dropped, user headers pass through. A malformed envelope
    header is ignored with a warning: the message is still stored, and the source does not crash
    on it (and re-read it forever)."""
    keys, event_ms, user = decode_foreign(msg.headers, offset, default_event_ms)
    return SourceRecord(msg.data, offset, event_ms, keys or None, user or None, offset)


async def linger_fill(queue: asyncio.Queue, batch: list, limit: int, linger: float = 0.005) -> list:
    """Top `batch` up from `queue` to `limit`, giving the rest of a burst `linger` seconds to
    arrive, so one store and one upstream ack cover it."""
    deadline = time.monotonic() + linger
    while len(batch) < limit:
        if queue.empty():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.001)
            continue
        batch.append(queue.get_nowait())
    return batch


class BufferFull(Exception):
    """Raised to a non-blocking emitter when an out-edge buffer has no room."""


class RecordRejected(ValueError):
    """Raised by `try_emit` for a record the server cannot store (larger than its max_payload with
    headers, a header it cannot carry); nothing was stored. `emit` dead-letters such a record
    instead (the source's dead-letter stream) and stores the rest."""


class DatumsRejected(Exception):
    """Raised by a sink's `write` for datums that can never be written (a payload the target
    refuses); `reasons` maps their positions in the batch to the error text. The worker sends
    those to the fallback sink (or the dead-letter stream) at once. The others are written again
    (a rolled-back transaction), unless `rest_written` says the sink already wrote them."""

    def __init__(self, reasons: dict[int, str], rest_written: bool = False):
        self.reasons = reasons
        self.rest_written = rest_written
        first = next(iter(reasons.values()), "")
        super().__init__(f"{len(reasons)} datum(s) rejected; first: {first}")


class PartialWrite(Exception):
    """Raised by a sink's `write` that wrote only part of a batch: `failed` maps the positions
    not written to the error text. Only those are retried (or given up) under `retryStrategy`."""

    def __init__(self, failed: dict[int, str]):
        self.failed = failed
        first = next(iter(failed.values()), "")
        super().__init__(f"{len(failed)} datum(s) not written; first: {first}")


class ConnectorConfigError(ValueError):
    """A connector setting that cannot work with the server found at start (e.g. a body limit
    above its max_payload). `field` is the setting's spec name; the worker reports it as
    `file: spec.vertices[i].<kind>.<connector>.<field>: reason`."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def connector_field_path(p: "Pipeline", vertex: str, field: str) -> str:
    """`spec.vertices[i].source.http.maxBodySize`: where a ConnectorConfigError's field is written."""
    index = [v.name for v in p.spec.vertices].index(vertex)
    v = p.vertex(vertex)
    role, config = ("source", v.source) if v.source is not None else ("sink", v.sink)
    return f"spec.vertices[{index}].{role}.{config.kind}.{field}"


def server_problems(p: "Pipeline", max_payload: int) -> list[tuple[str, str]]:
    """Connector settings the connected server cannot carry, as (field path, reason), so that
    `provision` and `run` report them before anything starts (each source checks again itself)."""
    from vertices.sources.http import body_limit  # noqa: PLC0415 - the only such setting so far

    problems = []
    for v in p.spec.vertices:
        if v.source is not None and v.source.http is not None:
            try:
                body_limit(v.source.http, max_payload)
            except ConnectorConfigError as exc:
                problems.append((connector_field_path(p, v.name, exc.field), exc.reason))
    return problems


Emit = Callable[[list[SourceRecord]], Awaitable[None]]


@dataclass
class ConnectorContext:
    pipeline: str
    vertex: str
    nats: NatsSettings  # the pipeline's own server; connectors default to it when url is unset
    nc: Client
    stopping: asyncio.Event
    extra: dict[str, Any] = field(default_factory=dict)

    async def connect(self, url: str | None) -> Client:
        """The pipeline's own connection when `url` is unset, else a new one to `url`."""
        if url is None or url == self.nats.url:
            return self.nc
        return await self.nats.with_url(url).connect(f"natsflow-{self.pipeline}-{self.vertex}-ext",
                                                     stopping=self.stopping)


class SourceConnector(Protocol):
    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        """Read until ctx.stopping is set. `emit` returns once records are stored in the first
        buffer (waiting while it is full) or, for one the server cannot take, in the source's
        dead-letter stream; `try_emit` raises BufferFull instead of waiting and RecordRejected
        instead of dead-lettering. Acknowledge upstream only after either returns."""


class SinkConnector(Protocol):
    async def start(self, ctx: ConnectorContext) -> None: ...

    async def write(self, datums: list[Datum]) -> None:
        """Write all or raise; the batch is retried as a whole (ids make retries idempotent where
        the sink supports it). `DatumsRejected` and `PartialWrite` narrow that down."""

    async def close(self) -> None: ...


def load_connector(registry: dict[str, str], kind: str, config: Any) -> Any:
    """The connector for `kind`, built from its config with every `secretRef` replaced by the
    secret's value (framework/spec/secrets.py): connectors only see plain strings."""
    module_name, _, cls_name = registry[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(resolved(config, kind))
