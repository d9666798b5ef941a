"""Turning a vertex's outputs into buffer writes: tag conditions pick out-edges, keys pick the
partition of a keyed reduce, ids are derived, and the watermark publisher learns what was written."""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from framework.isb.envelope import encode_envelope
from framework.isb.names import archive_stream_name, archive_subject, edge_subject, stream_name
from framework.isb.ports import Publishes, Writes
from framework.isb.writer import OutMessage
from framework.sdk import Message
from framework.spec import Edge, OnFull, Pipeline
from framework.transport.headers import HeaderError
from framework.watermark.publisher import WatermarkPublisher


@dataclass(frozen=True, slots=True)
class Route:
    """One out-edge of a vertex: the subjects of its target's buffer partitions."""
    edge: Edge
    subjects: tuple[str, ...]  # one per partition of the target's buffer
    targets: tuple[str, ...]  # writer keys: "<to>" or "<to>#<partition>"

    def pick(self, keys: Sequence[str] | None) -> int:
        if len(self.subjects) == 1:
            return 0
        # The same keys always land in the same partition, so a key's window lives in one place.
        return zlib.crc32("\x1f".join(keys or ()).encode()) % len(self.subjects)


@dataclass(slots=True)
class Outgoing:
    """One message ready to route: its payload, envelope fields and tags."""

    msg_id: str
    data_id: str
    value: bytes
    event_time_ms: int
    keys: list[str] | tuple[str, ...] | None
    headers: Mapping[str, str] | None
    tags: frozenset[str]
    late: bool = False
    wire: bytes | None = None  # the encoded envelope, once `Router.prepare` has checked it


class UnpublishableOutput(ValueError):
    """An output the server cannot take whatever its state (too large, a header it cannot carry):
    its input goes to the dead-letter stream instead of failing, and retrying, the whole batch."""


@dataclass(frozen=True, slots=True)
class WriteReport:
    """What a write did: per target (routed, dropped for a full buffer), and the unrouted count."""
    per_target: dict[str, tuple[int, int]]  # to-vertex -> (routed, discarded because full)
    unrouted: int  # messages whose tags matched no out-edge


def source_msg_id(vertex: str, offset: str) -> str:
    """A source's `Nats-Msg-Id`: `<vertex>:<offset>` (docs/protocol.md, section 5)."""
    return f"{vertex}:{offset}"


# The writer's key of a source's archive stream: `_` is in no vertex name, so no target has it.
ARCHIVE_KEY = "_archive"
# An archive keeps by age and size and drops its oldest: it never refuses, so never holds a writer back.
ARCHIVE_SOFT_LIMIT = 1 << 62


def target_key(to: str, partition: int | None) -> str:
    """The writer's key of a target buffer partition: `<to>` or `<to>#<partition>`."""
    return to if partition is None else f"{to}#{partition}"


class Router:
    """Routes a batch of outputs to the buffers of a vertex's out-edges and writes them."""

    def __init__(self, p: Pipeline, vertex: str, writer: Writes, publisher: Publishes | None = None,
                 archive: bool = False):
        """`archive`: also write every item to the vertex's archive stream (a source with
        `archive:`), in the same batch as its out-edges, so it costs one publish per item."""
        self._writer = writer
        self._pub = publisher  # knows the last acked sequence per subject
        self._routes: list[Route] = []
        for e in p.out_edges(vertex):
            parts = p.partitions(e.to)
            limits = p.limits_for(e.to)
            for part in parts:
                writer.add_target(target_key(e.to, part), stream_name(p.name, e.to, part), limits.buffer_soft_limit)
            self._routes.append(Route(e, tuple(edge_subject(p.name, e.to, vertex, part) for part in parts),
                                      tuple(target_key(e.to, part) for part in parts)))
        source = p.vertex(vertex).source
        self._archive: str | None = None
        if archive and source is not None and source.archive is not None:
            self._archive = archive_subject(p.name, vertex)
            writer.add_target(ARCHIVE_KEY, archive_stream_name(p.name, vertex), ARCHIVE_SOFT_LIMIT)
        self._plain = all(e.conditions is None and not e.late for e in p.out_edges(vertex))
        self.watermark_targets = [(e.to, part or 0) for e in p.out_edges(vertex) for part in p.partitions(e.to)]
        self.wm: WatermarkPublisher | None = None

    def targets(self, tags: frozenset[str], late: bool = False) -> list[Route]:
        if self._plain:
            return self._routes
        return [r for r in self._routes if r.edge.late == late and r.edge.accepts(tags)]

    async def full_target(self, n: int) -> str | None:
        """The first target that cannot take `n` more messages now, if any."""
        for r in self.targets(frozenset()):
            for key in r.targets:
                if await self._writer.room(key, n) < n:
                    return r.edge.to
        return None

    def prepare(self, item: Outgoing) -> str | None:
        """Encode the item's envelope now and check the server can take it: None, or why not
        (a caller dead-letters its input rather than publish a batch the server refuses)."""
        try:
            item.wire = encode_envelope(item.msg_id, item.data_id, item.event_time_ms, item.keys, item.headers)
        except HeaderError as exc:
            return str(exc)
        size = len(item.wire) + len(item.value)
        limit = self._writer.max_payload
        if size > limit:
            return f"{size} bytes with headers, over the server's max_payload {limit}"
        return None

    def check_outputs(self, items: list[Outgoing], indexes: list[int] | None = None) -> None:
        """prepare() every output of one input; UnpublishableOutput names the first that fails by
        its index in the handler's result (`indexes`, default 0, 1, ...)."""
        for n, item in enumerate(items):
            problem = self.prepare(item)
            if problem is not None:
                raise UnpublishableOutput(describe(f"output {n if indexes is None else indexes[n]}", problem))

    async def write(self, items: list[Outgoing]) -> WriteReport:
        """Write all items; report per target vertex how many were routed to it and discarded."""
        batches: dict[str, tuple[OnFull, list[OutMessage]]] = {
            key: (r.edge.on_full, []) for r in self._routes for key in r.targets
        }
        archived: list[OutMessage] = []
        unrouted = 0
        for item in items:
            headers = item.wire or encode_envelope(item.msg_id, item.data_id, item.event_time_ms, item.keys,
                                                   item.headers)
            if self._archive is not None:  # what the source took in, routed or not
                archived.append(OutMessage(self._archive, item.value, headers))
            routes = self.targets(item.tags, item.late)
            if not routes:
                unrouted += 1  # no edge's condition matched its tags
                continue
            for r in routes:
                i = r.pick(item.keys)
                batches[r.targets[i]][1].append(OutMessage(r.subjects[i], item.value, headers))
        if archived:
            batches[ARCHIVE_KEY] = (OnFull.retry_until_success, archived)
        dropped = await self._writer.write(batches)
        self._note_sequences()
        per_target: dict[str, tuple[int, int]] = {}
        for key, (_, msgs) in batches.items():
            if key == ARCHIVE_KEY:
                continue
            to = key.split("#")[0]
            routed, lost = per_target.get(to, (0, 0))
            per_target[to] = (routed + len(msgs), lost + dropped.get(key, 0))
        return WriteReport(per_target, unrouted)

    def _note_sequences(self) -> None:
        if self.wm is None or self._pub is None:
            return
        for r in self._routes:
            for part, subject in enumerate(r.subjects):
                seq = self._pub.last_seq.get(subject)
                if seq:
                    self.wm.wrote((r.edge.to, part), seq)


def describe(what: str, problem: str) -> str:
    """`output 1 is 1048700 bytes with headers, ...` / `output 0: header name 'X(bad)' is ...`."""
    return f"{what} is {problem}" if problem[:1].isdigit() else f"{what}: {problem}"


def as_bytes(value: bytes | str | bytearray | memoryview) -> bytes:
    """A handler's output value as bytes (str is UTF-8); TypeError for anything else."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"Message.value must be bytes or str, not {type(value).__name__}")


def message_tags(m: Message) -> frozenset[str]:
    """The tags of a handler's Message, as the router matches them."""
    return frozenset(m.tags) if m.tags else frozenset()
