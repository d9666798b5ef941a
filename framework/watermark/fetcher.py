"""The reader's side of watermarks: a WatermarkFetcher follows the writers' entries for one
buffer partition and computes the reader's watermark (protocol: watermark/marks.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.js.kv import KeyValue

from framework.watermark.marks import PUBLISHER_TIMEOUT_S, UNKNOWN

log = logging.getLogger("natsflow.watermark")


@dataclass
class _Writer:
    entries: list[tuple[int, int]] = field(default_factory=list)  # (seq, wm), seq ascending
    ts: int = 0


class WatermarkFetcher:
    """A reader's view of its buffer's watermark (one buffer partition, read in order)."""

    def __init__(self, kv: KeyValue, to_vertex: str, partition: int, timeout: float = PUBLISHER_TIMEOUT_S):
        self._kv = kv
        self._pattern = f"*.{to_vertex}.{partition}.*"
        self._writers: dict[str, _Writer] = {}
        self._timeout_ms = int(timeout * 1000)
        self.wm = UNKNOWN
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    async def start(self, wait_ready: float | None = None) -> None:
        """Watch the writers' entries; with `wait_ready`, wait (bounded) until the KV replayed the
        entries that exist, so the first watermark is not a minimum over a partial set."""
        watcher = await self._kv.watch(self._pattern)

        async def pump() -> None:
            async for entry in watcher:
                if entry is None:
                    self.ready.set()
                    continue
                if entry.value:
                    self.observe(entry.key, json.loads(entry.value))

        self._task = asyncio.create_task(pump())
        if wait_ready:
            try:
                await asyncio.wait_for(self.ready.wait(), wait_ready)
            except TimeoutError:
                log.warning("watermark entries for %s not replayed within %.0fs", self._pattern, wait_ready)

    def observe(self, key: str, value: dict[str, Any]) -> None:
        w = self._writers.setdefault(key, _Writer())
        w.ts = int(value["ts"])
        seq, wm = int(value["seq"]), int(value["wm"])
        if w.entries and w.entries[-1][0] == seq:
            w.entries[-1] = (seq, max(wm, w.entries[-1][1]))
        elif not w.entries or seq > w.entries[-1][0]:
            w.entries.append((seq, wm))

    def compute(self, processed_seq: int) -> int:
        """The watermark once everything up to `processed_seq` is processed; monotonic."""
        now = int(time.time() * 1000)
        candidates = []
        for w in self._writers.values():
            last_seq = w.entries[-1][0] if w.entries else 0
            if now - w.ts > self._timeout_ms and processed_seq >= last_seq:
                continue  # silent for the timeout and nothing of it left to read: gone
            applicable = [(seq, wm) for seq, wm in w.entries if seq <= processed_seq]
            if not applicable:
                return self.wm  # a writer whose promise we have not reached yet
            keep = max(applicable, key=lambda e: e[1])
            future = [(s, m) for s, m in w.entries if s > processed_seq]
            if len(future) > 256:
                future = future[:-1:2] + future[-1:]  # thin; the entry in force and the newest stay
            w.entries = [keep] + future
            candidates.append(keep[1])
        if candidates:
            self.wm = max(self.wm, min(candidates))
        return self.wm

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
