"""What a user's function sees and returns: `Datum` in, `Message` out."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Mapping, Sequence

DROP = "__drop__"
"""The tag that drops a message; `Message.drop()` sets it."""


@dataclass(frozen=True, slots=True)
class Datum:
    """One input message of a UDF or sink."""

    keys: list[str]
    value: bytes
    event_time: datetime
    headers: Mapping[str, str]
    id: str

    @property
    def event_time_ms(self) -> int:
        return int(self.event_time.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Message:
    """One output message; `tags` steer it to out-edges whose conditions match and are not stored."""

    value: bytes
    keys: Sequence[str] | None = None
    tags: Sequence[str] | None = None
    headers: Mapping[str, str] | None = field(default=None)
    event_time: datetime | None = None

    @classmethod
    def drop(cls) -> "Message":
        return cls(b"", tags=(DROP,))

    @property
    def is_drop(self) -> bool:
        return bool(self.tags) and DROP in self.tags  # type: ignore[operator]


def datetime_from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
