"""What the conformance kit reads of its private server: every message of a stream (headers parsed
from their stored bytes, so nothing a vertex writes can break the reading), whether a stream has
stopped growing, and the server-side fault it injects (a stream's `max_msgs` lowered)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from framework.isb import envelope
from framework.testing.rules import Output
from framework.transport.headers import parse_header_block


async def until(cond: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.02) -> Any:
    """Poll `cond` until truthy; its last value (falsy) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


async def read_stream(js: JetStreamContext, stream: str, edge: str, into: list[Output]) -> int:
    """Reads every message currently in `stream` (by sequence; nothing is acked). Headers come from
    the stored bytes: nats-py's own parser of a stored message returns objects, not text, for
    non-ASCII values, which made the kit crash instead of reporting the vertex that wrote them."""
    info = await js.stream_info(stream)
    first, last = info.state.first_seq, info.state.last_seq
    count = 0
    for seq in range(max(first, 1), last + 1):
        try:
            raw = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        h = parse_header_block(base64.b64decode(raw.hdrs)) if raw.hdrs else {}
        into.append(Output(edge, h.get(envelope.HDR_MSG_ID, ""), h.get(envelope.HDR_ID, ""), raw.data or b"", h,
                           seq))
        count += 1
    return count


async def messages(js: JetStreamContext, stream: str) -> int:
    return (await js.stream_info(stream)).state.messages


async def stalls(js: JetStreamContext, stream: str, quiet: float = 1.0, timeout: float = 30.0) -> bool:
    """True once `stream` stops growing for `quiet` seconds (and holds something)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = await messages(js, stream)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n > 0
        await asyncio.sleep(0.05)
    return False


async def set_max_msgs(js: JetStreamContext, stream: str, max_msgs: int) -> None:
    """The fault: with `discard: new`, a stream at `max_msgs` refuses every further publish
    (err_code 10077) whatever the writer's soft-limit estimate says; -1 lifts it."""
    config = (await js.stream_info(stream)).config
    await js.update_stream(replace(config, max_msgs=max_msgs))
