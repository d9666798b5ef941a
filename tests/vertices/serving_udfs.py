"""Handlers the serving tests run inside real vertex processes: what a request's body asks for."""

from __future__ import annotations

import asyncio
import time

from framework import Datum, Message


def answer(keys: list[str], datum: Datum) -> list[Message]:
    """`words a b c` → one output per word (flatmap; `-x` tagged `lost`); `drop` → Message.drop(); `filter` → no
    output; `fail ...` raises; `slow` sleeps 2 s; anything else → the body in upper case."""
    text = datum.value.decode()
    if text.startswith("words "):  # a word starting with "-" is tagged `lost`: no edge takes it
        return [Message(w.encode(), tags=["lost"] if w[0] == "-" else None) for w in text.split()[1:]]
    if text == "drop":
        return [Message.drop()]
    if text == "filter":
        return []
    if text.startswith("fail"):
        raise ValueError(f"cannot answer {text!r}")
    if text == "slow":
        time.sleep(2)
    return [Message(text.upper().encode())]


async def tokens(keys: list[str], datum: Datum):
    """mapStream: one output per word, 100 ms apart (an LLM streaming tokens)."""
    for word in datum.value.decode().split():
        await asyncio.sleep(0.1)
        yield Message(word.encode())
