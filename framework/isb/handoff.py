"""The edge inside a fused chain (framework/runtime/fused.py): an `isb.ports.Writes` with no buffer
behind it. A write hands the batch, as delivered messages, straight to the next vertex of the
chain in the same process and returns once that vertex (and so the rest of the chain) has
handled it; the writing vertex acks its own input only then.

Each handed message is a `memory.MemoryMsg`: its headers parsed from the wire form exactly as a
NATS reader sees them, so the next vertex decodes it, derives its outputs' ids from its
`Nats-Msg-Id` (`envelope.origin`) and dead-letters it as if it had come through a buffer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import cast

from nats import errors as nats_errors
from nats.aio.msg import Msg

from framework.isb.memory import MemoryMsg, parse_headers
from framework.isb.writer import OutMessage
from framework.spec import OnFull

Take = Callable[[list[Msg]], Awaitable[bool]]


class HandedBack(nats_errors.Error):
    """The next vertex of the chain handed the batch back (it is stopping): the writer must not ack
    its inputs. A NATS error to the forward loop and the source, which hand their inputs back on one."""


class Handoff:
    """`Writes` into the next vertex of a fused chain. `stream`: the name the next vertex's buffer
    would have (only in the handed messages' ack subjects, where `envelope.stream_sequence` reads
    them); `max_payload`: the server's, so an output too large for a buffer is dead-lettered at the
    same vertex as when unfused."""

    def __init__(self, stream: str, max_payload: int):
        self.stream = stream
        self._max_payload = max_payload
        self._seq = 0
        self.take: Take | None = None  # the next vertex's handler, set once it is open

    @property
    def max_payload(self) -> int:
        return self._max_payload

    def add_target(self, key: str, stream: str, soft_limit: int) -> None:
        pass  # one target, no buffer: nothing to keep under a limit

    async def room(self, key: str, wanted: int) -> int:
        return wanted  # the next vertex takes the batch before the write returns

    async def write(self, batches: dict[str, tuple[OnFull, list[OutMessage]]]) -> dict[str, int]:
        now = time.time_ns()
        handed: list[MemoryMsg] = []
        for _, out in batches.values():
            for m in out:
                self._seq += 1
                handed.append(MemoryMsg(self.stream, self._seq, m.payload, parse_headers(m.headers), now,
                                        subject=m.subject))
        if not handed:
            return {}
        if self.take is None:
            raise HandedBack(f"the next vertex of the fused chain ({self.stream}) is not open yet")
        if not await self.take(cast(list[Msg], handed)):
            raise HandedBack(f"the next vertex of the fused chain ({self.stream}) handed {len(handed)} back")
        return {}
