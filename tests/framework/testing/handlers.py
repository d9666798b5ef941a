"""Handlers of the in-memory harness tests (imported by the pipelines the tests write)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable

from framework import Datum, Message, Window, side_input


def tag_words(keys: list[str], datum: Datum) -> Message | None:
    """'a' -> tag a, 'ab' -> tags a and b, 'drop' -> dropped, 'none' -> filtered out."""
    text = datum.value.decode()
    if text == "drop":
        return Message.drop()
    if text == "none":
        return None
    return Message(datum.value, tags=sorted(set(text)))


def split(keys: list[str], datum: Datum) -> list[Message]:
    return [Message(w.encode(), keys=[w[0]]) for w in datum.value.decode().split()]


def batch_sizes(datums: list[Datum]) -> list[Message]:
    return [Message(d.value + f"/{len(datums)}".encode()) for d in datums]


def batch_by_id(datums: list[Datum]) -> dict[str, Message]:
    return {d.id: Message(d.value.upper()) for d in datums}


async def stream_chars(keys: list[str], datum: Datum) -> AsyncIterator[Message]:
    for c in datum.value.decode():
        yield Message(c.encode(), headers={"X-From": datum.value.decode()})


def total(keys: list[str], datums: Iterable[Datum], window: Window) -> Message:
    values = [int(d.value) for d in datums]
    body = {"key": keys[0] if keys else "", "sum": sum(values), "n": len(values),
            "start": int(window.start.timestamp() * 1000), "end": int(window.end.timestamp() * 1000)}
    return Message(json.dumps(body, sort_keys=True).encode())


def fail_on_bad(keys: list[str], datum: Datum) -> Message:
    if datum.value.startswith(b"bad"):
        raise ValueError(f"cannot take {datum.value!r}")
    return Message(datum.value)


def not_bytes(keys: list[str], datum: Datum) -> Message:
    return Message(123 if datum.value == b"int" else datum.value)  # type: ignore[arg-type]


_attempts: dict[bytes, int] = {}


def flaky(keys: list[str], datum: Datum) -> Message:
    """Fails the first call for each input, succeeds on the retry."""
    _attempts[datum.value] = _attempts.get(datum.value, 0) + 1
    if _attempts[datum.value] == 1:
        raise ConnectionError("first call fails")
    return Message(datum.value)


def prefix_with_side_input(keys: list[str], datum: Datum) -> Message:
    return Message(side_input("prefix") + datum.value)


def countdown(keys: list[str], datum: Datum) -> Message:
    """n > 0: n-1 back round the cycle (tag 'again'); 0: out (tag 'done')."""
    n = int(datum.value)
    return Message(str(max(n - 1, 0)).encode(), tags=["again" if n > 0 else "done"])


def forever(keys: list[str], datum: Datum) -> Message:
    return Message(datum.value, tags=["again"])


def reduce_fails(keys: list[str], datums: Iterable[Datum], window: Window) -> Message:
    values = [int(d.value) for d in datums]
    if 13 in values:
        raise RuntimeError("unlucky window")
    return Message(str(sum(values)).encode())


written: list[bytes] = []
fallback_got: list[tuple[bytes, str]] = []


def sink_collect(datums: list[Datum]) -> None:
    if any(d.value == b"bad" for d in datums):
        raise OSError("the store refuses b'bad'")
    written.extend(d.value for d in datums)


async def sink_fallback(datums: list[Datum]) -> None:
    fallback_got.extend((d.value, d.headers["Nf-Error"]) for d in datums)
