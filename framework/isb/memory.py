"""An in-process ISB: bounded buffers in memory with JetStream's delivery rules, for the test harness.

One `MemoryISB` holds named streams (`nf_<pipeline>_<vertex>[_p<i>]` and dead-letter streams, the
same names as on NATS). A stream keeps what JetStream keeps for a work-queue buffer:

- `publish` stores a message unless the stream is full (`MemoryFull`, JetStream's error 10077) or
  its `Nats-Msg-Id` was stored before (dropped as a duplicate, as the server's duplicate window
  does); each stored message gets the next stream sequence.
- `fetch` hands out up to `n` messages in order and holds them in flight; `ack` removes them, `nak`
  puts them back at the front with their delivery count raised.
- A fetched message is a `MemoryMsg`: `data`, `headers` (a dict, parsed from the wire form as a
  NATS client would) and a JetStream ack subject in `reply`, so every helper that reads a delivered
  message (`isb.envelope.stream_sequence`, `origin`, `delivery_count`, `stream_timestamp_ms`) works
  on it unchanged.

The adapters at the bottom implement the buffer interface of `isb.ports` (`Reads`: what
`reader.BufferReader` does; `Writes`: `writer.BufferWriter`; `Publishes`: `writer.JetStreamPublisher`)
over a `MemoryISB`. Nothing here waits: an empty fetch returns at once, a full buffer refuses.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from framework.isb.envelope import HDR_MSG_ID
from framework.isb.writer import OutMessage
from framework.spec import OnFull
from framework.transport.headers import encode_headers, parse_header_lines

if TYPE_CHECKING:
    from framework.isb.ports import Publishes, Writes

DEFAULT_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


class MemoryFull(Exception):
    """The stream holds its maximum number of messages (JetStream: error 10077, discard new)."""


@dataclass(slots=True)
class MemoryMsg:
    """A delivered message, shaped like `nats.aio.msg.Msg` where natsflow reads one."""

    stream: str
    seq: int
    data: bytes
    headers: dict[str, str]
    stored_ns: int
    delivered: int = 1
    subject: str = ""

    @property
    def reply(self) -> str:
        # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>
        return f"$JS.ACK.{self.stream}.{self.stream}.{self.delivered}.{self.seq}.{self.seq}.{self.stored_ns}.0"


def parse_headers(head: dict[str, str] | bytes) -> dict[str, str]:
    """Headers as a reader sees them: a dict, or the wire form (`NATS/1.0\\r\\n...`) parsed."""
    if isinstance(head, bytes):
        return parse_header_lines(head.partition(b"\r\n")[2])
    return dict(head)


@dataclass
class MemoryStream:
    """One buffer: stored messages in order, those handed out, and the msg ids seen."""

    name: str
    max_msgs: int = -1  # -1: unbounded
    pending: deque[MemoryMsg] = field(default_factory=deque)
    in_flight: dict[int, MemoryMsg] = field(default_factory=dict)
    ids: set[str] = field(default_factory=set)
    last_seq: int = 0

    def __len__(self) -> int:
        """Messages stored and not acked (pending or in flight), what the stream holds."""
        return len(self.pending) + len(self.in_flight)

    def room(self) -> int:
        return 1 << 62 if self.max_msgs < 0 else max(0, self.max_msgs - len(self))

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | bytes) -> int:
        """Store one message; its sequence, or 0 for a duplicate msg id. MemoryFull when full."""
        parsed = parse_headers(headers)
        msg_id = parsed.get(HDR_MSG_ID)
        if msg_id is not None and msg_id in self.ids:
            return 0
        if not self.room():
            raise MemoryFull(f"stream {self.name} is full ({self.max_msgs} messages)")
        if msg_id is not None:
            self.ids.add(msg_id)
        self.last_seq += 1
        self.pending.append(MemoryMsg(self.name, self.last_seq, data, parsed, time.time_ns(), subject=subject))
        return self.last_seq

    def fetch(self, n: int) -> list[MemoryMsg]:
        out: list[MemoryMsg] = []
        while self.pending and len(out) < n:
            m = self.pending.popleft()
            self.in_flight[m.seq] = m
            out.append(m)
        return out

    def ack(self, msgs: list[MemoryMsg]) -> None:
        for m in msgs:
            self.in_flight.pop(m.seq, None)

    def nak(self, msgs: list[MemoryMsg]) -> None:
        """Back to the front, in their order, to be delivered again."""
        for m in reversed(msgs):
            if self.in_flight.pop(m.seq, None) is not None:
                m.delivered += 1
                self.pending.appendleft(m)


class MemoryISB:
    """The streams of one in-process pipeline, by name, and which subjects each one takes."""

    def __init__(self, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.max_payload = max_payload
        self.streams: dict[str, MemoryStream] = {}
        self._subjects: dict[str, str] = {}  # subject -> stream

    def add_stream(self, name: str, subjects: list[str], max_msgs: int = -1) -> MemoryStream:
        s = self.streams.setdefault(name, MemoryStream(name, max_msgs))
        for subject in subjects:
            self._subjects[subject] = name
        return s

    def stream_for(self, subject: str) -> MemoryStream:
        try:
            return self.streams[self._subjects[subject]]
        except KeyError:
            raise LookupError(f"no stream takes subject {subject!r}") from None

    def publish(self, msg: OutMessage) -> int:
        return self.stream_for(msg.subject).publish(msg.subject, msg.payload, msg.headers)


class MemoryReader:
    """`isb.ports.Reads` (what `BufferReader` does) over one stream: fetch returns what is there,
    at once, never waiting out its timeout."""

    def __init__(self, isb: MemoryISB, stream: str, batch_size: int):
        self.stream = stream
        self.consumer = stream
        self._s = isb.streams[stream]
        self._batch = batch_size

    async def start(self) -> None:
        pass

    @property
    def held(self) -> int:
        """Messages handed out and not yet acked or nak'd."""
        return len(self._s.in_flight)

    async def fetch(self, timeout: float = 0.0) -> list[MemoryMsg]:
        return self._s.fetch(self._batch)

    async def ack(self, msgs: list[MemoryMsg]) -> None:
        self._s.ack(msgs)

    async def nak(self, msgs: list[MemoryMsg]) -> None:
        self._s.nak(msgs)

    def interrupt(self) -> None:
        pass

    async def close(self) -> None:
        pass


class MemoryPartitionsReader:
    """`isb.ports.Reads` over a partitioned buffer (an ordered vertex's): each batch from the first
    partition that has messages, in its stream order, as `runtime/ordered.py` hands them out."""

    def __init__(self, isb: MemoryISB, streams: list[str], batch_size: int):
        self.stream = self.consumer = streams[0]
        self._readers = [MemoryReader(isb, stream, batch_size) for stream in streams]
        self._handed: dict[int, MemoryReader] = {}  # id(message) -> its partition's reader

    async def start(self) -> None:
        pass

    @property
    def held(self) -> int:
        return sum(r.held for r in self._readers)

    async def fetch(self, timeout: float = 0.0) -> list[MemoryMsg]:
        for reader in self._readers:
            batch = await reader.fetch()
            if batch:
                self._handed.update((id(m), reader) for m in batch)
                return batch
        return []

    async def ack(self, msgs: list[MemoryMsg]) -> None:
        for reader, part in self._split(msgs):
            await reader.ack(part)

    async def nak(self, msgs: list[MemoryMsg]) -> None:
        for reader, part in self._split(msgs):
            await reader.nak(part)

    def _split(self, msgs: list[MemoryMsg]) -> list[tuple[MemoryReader, list[MemoryMsg]]]:
        by_reader: dict[int, tuple[MemoryReader, list[MemoryMsg]]] = {}
        for m in msgs:
            reader = self._handed.pop(id(m))
            by_reader.setdefault(id(reader), (reader, []))[1].append(m)
        return list(by_reader.values())

    def interrupt(self) -> None:
        pass

    async def close(self) -> None:
        pass


class MemoryPublisher:
    """`isb.ports.Publishes` (what `JetStreamPublisher` does) over a MemoryISB: one result per message, None = stored
    (a duplicate counts as stored, as the server acks it)."""

    def __init__(self, isb: MemoryISB):
        self._isb = isb
        self.last_seq: dict[str, int] = {}

    @property
    def max_payload(self) -> int:
        return self._isb.max_payload

    async def publish(self, msgs: list[OutMessage]) -> list[Exception | None]:
        out: list[Exception | None] = []
        for m in msgs:
            try:
                seq = self._isb.publish(m)
            except (MemoryFull, LookupError) as exc:
                out.append(exc)
                continue
            if seq:
                self.last_seq[m.subject] = seq
            out.append(None)
        return out

    async def close(self) -> None:
        pass


class MemoryWriter:
    """`isb.ports.Writes` (what `BufferWriter` does) over a MemoryISB. `discardLatest` drops what does not fit;
    `retryUntilSuccess` cannot wait in one process (nobody would drain the buffer meanwhile), so
    a full buffer raises MemoryFull: raise the buffer's limits, or feed less at once."""

    def __init__(self, isb: MemoryISB):
        self._isb = isb
        self._targets: dict[str, tuple[str, int]] = {}  # writer key -> (stream, soft limit)

    @property
    def max_payload(self) -> int:
        return self._isb.max_payload

    def add_target(self, key: str, stream: str, soft_limit: int) -> None:
        self._targets[key] = (stream, soft_limit)

    async def room(self, key: str, wanted: int) -> int:
        """Like BufferGate: room up to the soft limit (bufferMaxLength × bufferUsageLimit)."""
        stream, soft_limit = self._targets[key]
        s = self._isb.streams[stream]
        return max(0, min(wanted, soft_limit - len(s), s.room()))

    async def write(self, batches: dict[str, tuple[OnFull, list[OutMessage]]]) -> dict[str, int]:
        """Store every target's messages; how many were discarded per target."""
        dropped = {key: 0 for key in batches}
        for key, (on_full, msgs) in batches.items():
            if not msgs:
                continue
            s = self._isb.streams[self._targets[key][0]]
            room = await self.room(key, len(msgs))
            if room < len(msgs):
                if on_full is not OnFull.discard_latest:
                    raise MemoryFull(f"buffer {s.name} is full ({len(s)} messages held) and its edge says "
                                     "retryUntilSuccess: in one process nothing drains it meanwhile")
                dropped[key] = len(msgs) - room
            for m in msgs[:room]:
                s.publish(m.subject, m.payload, m.headers)
        return dropped


def stored_headers(msg: OutMessage) -> dict[str, str]:
    """The headers of an OutMessage as a reader would get them (for inspecting dead letters)."""
    return parse_headers(msg.headers if isinstance(msg.headers, bytes) else encode_headers(msg.headers))


if TYPE_CHECKING:
    def _offers_the_buffer_interface(isb: MemoryISB) -> tuple[Writes, Publishes]:
        """mypy checks that the writer and publisher here are what the runtime writes through.
        (MemoryReader does what `Reads` says, over MemoryMsg: shaped like the nats Msg the
        runtime reads, not one.)"""
        return MemoryWriter(isb), MemoryPublisher(isb)
