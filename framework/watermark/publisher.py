"""The writer's side of watermarks: one WatermarkPublisher per writing replica puts its promise
for each out-buffer partition into the watermark bucket (protocol: watermark/marks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.kv import KeyValue

from framework.watermark.marks import HEARTBEAT_S, PUBLISH_EVERY_S, UNKNOWN, replica_id

log = logging.getLogger("natsflow.watermark")


class WatermarkPublisher:
    """Publishes one writer's watermark for each of its out-buffers (throttled, plus heartbeats)."""

    def __init__(self, kv: KeyValue, from_vertex: str, targets: list[tuple[str, int]], replica: str | None = None):
        self._kv = kv
        self._keys = {t: f"{from_vertex}.{t[0]}.{t[1]}.{replica or replica_id()}" for t in targets}
        self._seq: dict[tuple[str, int], int] = {t: 0 for t in targets}
        self.wm = UNKNOWN
        self._sent_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._putting: asyncio.Task[None] | None = None

    def wrote(self, target: tuple[str, int], seq: int) -> None:
        if seq > self._seq.get(target, 0):
            self._seq[target] = seq

    async def update(self, wm: int, force: bool = False) -> None:
        self.wm = max(self.wm, wm)
        due = force or time.monotonic() - self._sent_at >= PUBLISH_EVERY_S
        if due and (self._putting is None or self._putting.done()):
            # In the background: the hot path must not wait a KV round trip.
            self._sent_at = time.monotonic()
            self._putting = asyncio.create_task(self._put())

    async def _put(self) -> None:
        self._sent_at = time.monotonic()
        now = int(time.time() * 1000)
        for target, key in self._keys.items():
            value = json.dumps({"wm": self.wm, "seq": self._seq[target], "ts": now}).encode()
            try:
                await self._kv.put(key, value)
            except Exception as exc:
                log.warning("watermark put %s failed: %s", key, exc)

    def start_heartbeat(self, on_idle: Callable[[], bool | Awaitable[bool]] | None = None) -> None:
        """Every second: `on_idle()` (may be async; True = the watermark moved) and a put if
        nothing was published for a second."""
        async def beat() -> None:
            while True:
                await asyncio.sleep(HEARTBEAT_S)
                moved = on_idle() if on_idle is not None else False
                if inspect.isawaitable(moved):
                    moved = await moved
                if moved or time.monotonic() - self._sent_at >= HEARTBEAT_S:
                    await self._put()

        self._task = asyncio.create_task(beat())

    async def close(self) -> None:
        """Stop beating; the last watermark is put once more, since throttling may have held
        it back (a source restarted later resumes from it)."""
        if self._task is not None:
            self._task.cancel()
        if self._putting is not None:
            await asyncio.gather(self._putting, return_exceptions=True)
        if self.wm >= 0:
            await self._put()


async def published(kv: KeyValue, from_vertex: str, wait: float = 5.0) -> list[dict[str, Any]]:
    """What every replica of `from_vertex` last published, live or gone: {"wm", "seq", "ts"}
    per out-buffer partition and replica (a restarted source picks its watermark up from here)."""
    watcher = await kv.watch(f"{from_vertex}.>")
    found: list[dict[str, Any]] = []
    try:
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(wait):
                async for entry in watcher:
                    if entry is None:
                        break
                    if entry.value:
                        found.append(json.loads(entry.value))
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
    return found
