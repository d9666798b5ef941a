"""What a user's function sees and returns: `Datum` in, `Message` out."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Literal

DROP = "__drop__"
"""The tag that drops a message; `Message.drop()` sets it."""


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class Datum:
    """One input message of a UDF or sink: `keys`, `value`, `event_time` (UTC), `headers`, `id`.

    The event time is kept as epoch milliseconds and turned into a datetime only when read, so a
    handler that never looks at it costs nothing for it.
    """

    __slots__ = ("event_time_ms", "headers", "id", "keys", "value")

    def __init__(self, keys: list[str], value: bytes, event_time: datetime | None = None,
                 headers: Mapping[str, str] | None = None, id: str = "", *, event_time_ms: int | None = None):
        if event_time_ms is None:
            event_time_ms = int((event_time or datetime.now(UTC)).timestamp() * 1000)
        self.keys = keys
        self.value = value
        self.headers = headers if headers is not None else _NO_HEADERS
        self.id = id
        self.event_time_ms = event_time_ms

    @property
    def event_time(self) -> datetime:
        return datetime_from_ms(self.event_time_ms)

    def __repr__(self) -> str:
        return (f"Datum(keys={self.keys!r}, value={self.value!r}, event_time={self.event_time.isoformat()}, "
                f"id={self.id!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Datum):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Message:
    """One output message; `tags` steer it to out-edges whose conditions match and are not stored."""

    value: bytes
    keys: Sequence[str] | None = None
    tags: Sequence[str] | None = None
    headers: Mapping[str, str] | None = field(default=None)
    event_time: datetime | None = None

    @classmethod
    def drop(cls) -> Message:
        return cls(b"", tags=(DROP,))

    @property
    def is_drop(self) -> bool:
        return bool(self.tags) and DROP in self.tags  # type: ignore[operator]


def datetime_from_ms(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Window:
    """The event-time window a reduce handler is called for: [start, end), UTC."""

    start: datetime
    end: datetime

    @classmethod
    def from_ms(cls, start_ms: int, end_ms: int) -> Window:
        return cls(datetime_from_ms(start_ms), datetime_from_ms(end_ms))


HandlerKind = Literal["sync", "async", "async_generator", "generator"]


def handler_kind(fn: Callable[..., Any]) -> HandlerKind:
    """How natsflow calls a user's handler: a coroutine function is awaited, an async generator
    iterated, a plain function run on a worker thread. An object whose `__call__` is one of these
    counts as that kind. The one place every vertex kind, the udsink and side inputs decide it."""
    for f in (fn, getattr(fn, "__call__", None)):  # noqa: B004 - the kind of __call__, not callability
        if inspect.isasyncgenfunction(f):
            return "async_generator"
        if inspect.iscoroutinefunction(f):
            return "async"
        if inspect.isgeneratorfunction(f):
            return "generator"
    return "sync"
