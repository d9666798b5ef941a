"""The one buffer interface a vertex reads and writes through, whichever ISB is behind it: the
JetStream one (reader.BufferReader, writer.BufferWriter, writer.JetStreamPublisher) or the
in-process one the test harness runs on (memory.MemoryReader, MemoryWriter, MemoryPublisher).
The runtime is typed against these, so either plugs in unchanged."""

from __future__ import annotations

from typing import Protocol

from nats.aio.msg import Msg

from framework.isb.writer import OutMessage
from framework.spec import OnFull


class Reads(Protocol):
    """Reading one buffer (partition): fetch a batch, then ack or nak every message of it."""

    stream: str
    consumer: str

    async def start(self) -> None:
        """Begin pulling."""

    async def fetch(self, timeout: float) -> list[Msg]:
        """Up to a batch of messages; waits at most `timeout` for the first one."""

    async def ack(self, msgs: list[Msg]) -> None:
        """Done with these: they leave the buffer."""

    async def nak(self, msgs: list[Msg]) -> None:
        """Hand these back for redelivery."""

    def interrupt(self) -> None:
        """Wake a waiting fetch (stopping)."""

    async def close(self) -> None:
        """Stop reading; what was fetched ahead and not handed out goes back."""


class Publishes(Protocol):
    """Publishing messages to whatever stream takes their subject, one result per message."""

    last_seq: dict[str, int]  # subject -> highest stream sequence stored (for watermarks)

    @property
    def max_payload(self) -> int:
        """The largest message (headers included) that can be stored."""

    async def publish(self, msgs: list[OutMessage]) -> list[Exception | None]:
        """Store every message: per message None (stored, or a duplicate) or the error."""

    async def close(self) -> None:
        """Stop taking acks."""


class Writes(Protocol):
    """Writing to the buffers of a vertex's out-edges with back pressure (`onFull`)."""

    @property
    def max_payload(self) -> int:
        """The largest message (headers included) that can be stored."""

    def add_target(self, key: str, stream: str, soft_limit: int) -> None:
        """A buffer (partition) written under `key`, kept under `soft_limit` messages."""

    async def room(self, key: str, wanted: int) -> int:
        """How many of `wanted` more messages the target takes now."""

    async def write(self, batches: dict[str, tuple[OnFull, list[OutMessage]]]) -> dict[str, int]:
        """Write every target's messages; how many were discarded per target."""
