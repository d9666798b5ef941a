"""Turning a vertex's outputs into buffer writes: tag conditions pick out-edges, ids are derived."""

from __future__ import annotations

from dataclasses import dataclass

from .buffer import BufferWriter, OutMessage, edge_subject, encode_envelope, stream_name
from .sdk import Message
from .spec import Edge, OnFull, Pipeline


@dataclass(frozen=True, slots=True)
class Route:
    edge: Edge
    subject: str


@dataclass(slots=True)
class Outgoing:
    """One message ready to route: its payload, envelope fields and tags."""

    msg_id: str
    data_id: str
    value: bytes
    event_time_ms: int
    keys: list[str] | tuple[str, ...] | None
    headers: dict[str, str] | None
    tags: frozenset[str]


class Router:
    """Routes a batch of outputs to the buffers of a vertex's out-edges and writes them."""

    def __init__(self, p: Pipeline, vertex: str, writer: BufferWriter):
        self._writer = writer
        self._routes = [Route(e, edge_subject(p.name, e.to, vertex)) for e in p.out_edges(vertex)]
        self._unconditional = all(e.conditions is None for e in p.out_edges(vertex))
        for r in self._routes:
            limits = p.limits_for(r.edge.to)
            writer.add_target(r.edge.to, stream_name(p.name, r.edge.to), limits.buffer_soft_limit)

    def targets(self, tags: frozenset[str]) -> list[Route]:
        if self._unconditional:
            return self._routes
        return [r for r in self._routes if r.edge.accepts(tags)]

    async def full_target(self, n: int) -> str | None:
        """The first unconditional target that cannot take `n` more messages now, if any."""
        for r in self.targets(frozenset()):
            if await self._writer.room(r.edge.to, n) < n:
                return r.edge.to
        return None

    async def write(self, items: list[Outgoing]) -> "WriteReport":
        """Write all items; report per target vertex how many were routed to it and discarded."""
        batches: dict[str, tuple[OnFull, list[OutMessage]]] = {
            r.edge.to: (r.edge.on_full, []) for r in self._routes
        }
        unrouted = 0
        for item in items:
            routes = self.targets(item.tags)
            if not routes:
                unrouted += 1  # no edge's condition matched its tags
                continue
            headers = encode_envelope(item.msg_id, item.data_id, item.event_time_ms, item.keys, item.headers)
            for r in routes:
                batches[r.edge.to][1].append(OutMessage(r.subject, item.value, headers))
        dropped = await self._writer.write(batches)
        per_target = {to: (len(msgs), dropped.get(to, 0)) for to, (_, msgs) in batches.items()}
        return WriteReport(per_target, unrouted)


@dataclass(frozen=True, slots=True)
class WriteReport:
    per_target: dict[str, tuple[int, int]]  # to-vertex -> (routed, discarded because full)
    unrouted: int  # messages whose tags matched no out-edge


def as_bytes(value: bytes | str | bytearray | memoryview) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"Message.value must be bytes or str, not {type(value).__name__}")


def message_tags(m: Message) -> frozenset[str]:
    return frozenset(m.tags) if m.tags else frozenset()

