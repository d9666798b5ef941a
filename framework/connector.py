"""The connector contract: what a source and a sink implement, what they may call, and how a
spec names them. docs/connectors.md walks through writing one.

A connector is found through the registry (framework/spec/registry.py: entry point groups
`natsflow.sources` / `natsflow.sinks`, each naming a `ConnectorInfo`) and built from its config,
with every `secretRef` already replaced by the secret's value. It imports natsflow only from here,
`framework.sdk` (Datum) and `framework.spec.types` (config field types): those are the seams that
stay put while the framework's insides change.

**A source** (`SourceConnector.run`) reads until `ctx.stopping` is set and hands records to `emit`
(or `try_emit`); before each upstream read it awaits `ctx.until_running()`, which waits while the
pipeline is paused (`emit` waits too, `try_emit` refuses with BufferFull). It acknowledges (commits,
acks, XACKs) upstream only after that call returned: then the records are stored in the first
buffer, or, for one the server can never take, in the source's dead-letter stream. A record's
`offset` must be the same each time the same upstream record is read, because it becomes the
message's dedup id: a re-read after a crash (read, stored, not yet acknowledged upstream) is then
dropped by JetStream. Exceptions other than a clean return end the worker (it is restarted); retry
transient upstream errors yourself, waiting on `ctx.stopping`.

**A sink** (`SinkConnector`) writes a batch or raises. Any exception fails the whole batch, which
the worker retries under the vertex's `retryStrategy`, so a write must be safe to repeat (the data
id is the idempotency key where the target has one). `DatumsRejected` names datums that can never
be written (they go to the fallback sink or the dead-letter stream at once), `PartialWrite` the
ones not written this time (only they are retried). The worker acknowledges a batch upstream only
after `write` returned.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nats.aio.client import Client

from framework.isb.envelope import (
    HDR_MSG_ID,
    decode_foreign,
    encode_envelope,
    envelope_headers,
    is_natsflow_header,
    is_natsflow_header_any_case,
    stream_sequence,
)
from framework.isb.names import source_consumer_name
from framework.isb.reader import BufferReader as StreamReader
from framework.isb.writer import JetStreamPublisher, OutMessage, Unpublishable
from framework.runtime.bounded import Threads
from framework.runtime.routing import source_msg_id
from framework.sdk import Datum
from framework.spec.handlers import load_handler
from framework.spec.plan import plan
from framework.spec.registry import ConnectorInfo, connector
from framework.spec.secrets import resolved
from framework.transport.client import publish_many
from framework.transport.headers import HeaderError, encode_headers
from framework.transport.headers import escape_header_name as header_name
from framework.transport.settings import NatsSettings, mask_url

if TYPE_CHECKING:
    from framework.spec import Pipeline
    from framework.spec.model import SinkBlock, SourceBlock

__all__ = [
    "HDR_MSG_ID",
    "BufferFull",
    "ConnectorConfigError",
    "ConnectorContext",
    "ConnectorInfo",
    "DatumsRejected",
    "Emit",
    "HeaderError",
    "JetStreamPublisher",
    "OutMessage",
    "PartialWrite",
    "RecordRejected",
    "SinkConnector",
    "SourceConnector",
    "SourceMetrics",
    "SourceRecord",
    "StreamReader",
    "Threads",
    "Unpublishable",
    "encode_envelope",
    "encode_headers",
    "envelope_headers",
    "header_name",
    "is_natsflow_header",
    "is_natsflow_header_any_case",
    "linger_fill",
    "load_connector",
    "load_handler",
    "mask_url",
    "publish_many",
    "record_from_msg",
    "source_consumer_name",
    "source_msg_id",
    "stream_sequence",
]

log = logging.getLogger("natsflow.connectors")


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


async def linger_fill(queue: asyncio.Queue[Any], batch: list[Any], limit: int, linger: float = 0.005) -> list[Any]:
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


def connector_field_path(p: Pipeline, vertex: str, field: str) -> str:
    """`spec.vertices[i].source.http.maxBodySize`: where a ConnectorConfigError's field is written."""
    vp = plan(p, vertex)
    v = vp.vertex
    role, block = ("source", v.source) if v.source is not None else ("sink", v.sink)
    assert block is not None, f"vertex {vertex!r} has no connector"
    return f"{vp.path}.{role}.{block.kind}.{field}"


def server_problems(p: Pipeline, max_payload: int) -> list[tuple[str, str]]:
    """Connector settings the connected server cannot carry, as (field path, reason), so that
    `provision` and `run` report them before anything starts (each connector checks again itself)."""
    problems: list[tuple[str, str]] = []
    for v in p.spec.vertices:
        block: SourceBlock | SinkBlock | None = v.source if v.source is not None else v.sink
        if block is None or block.connector.server_check is None:
            continue
        try:
            block.connector.server_check(block.config, max_payload)
        except ConnectorConfigError as exc:
            problems.append((connector_field_path(p, v.name, exc.field), exc.reason))
    return problems


Emit = Callable[[list[SourceRecord]], Awaitable[None]]


class SourceMetrics(Protocol):
    """What a source may report beside the records it emits."""

    def upstream_backlog(self, state: str, n: int) -> None:
        """`source_upstream_backlog{state}`: e.g. `lag` (not yet read upstream), `pending` (read,
        not acknowledged); what KEDA and `natsflow up` scale a source on."""

    def dropped(self, reason: str, n: int) -> None:
        """`dropped_total{reason}`: messages the source let go on purpose (e.g. QoS 0 over its inbox)."""


@dataclass
class ConnectorContext:
    """What a running connector gets from its worker."""

    pipeline: str
    vertex: str
    nats: NatsSettings  # the pipeline's own server; connectors default to it when url is unset
    nc: Client
    stopping: asyncio.Event
    base_dir: Path | None = None  # the pipeline file's directory: user code a connector names imports from it
    metrics: SourceMetrics | None = None  # set for sources
    running: asyncio.Event | None = None  # set while the pipeline runs, clear while paused (sources)

    async def until_running(self) -> None:
        """Wait while the pipeline is paused (`natsflow pause`); return at once when it runs or
        the source is stopping. A source calls it before each upstream read, so a pause stops
        its reads rather than holding a read batch in `emit` (which also waits while paused)."""
        running = self.running
        if running is None or running.is_set() or self.stopping.is_set():
            return
        waits = [asyncio.ensure_future(running.wait()), asyncio.ensure_future(self.stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

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


def load_connector(role: Literal["source", "sink"], kind: str, config: Any) -> Any:
    """The registered connector of `kind` (framework/spec/registry.py), built from its config with
    every `secretRef` replaced by the secret's value (framework/spec/secrets.py): connectors only
    see plain strings. Its implementation module is imported here, not when the spec loads."""
    module_name, _, cls_name = connector(role, kind).factory.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(resolved(config, kind))
