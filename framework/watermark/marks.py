"""Watermarks: how far event time has progressed, published per writer into a JetStream KV bucket.

A writer (one replica of vertex U) that writes to buffer B of vertex V puts, under the key
`U.V.<partition>.<replica>` of bucket `nf_<pipeline>_wm`, the value
`{"wm": <epoch ms>, "seq": <stream seq of its last write to B>, "ts": <wall clock ms>}`.
It promises: every message it writes to B after sequence `seq` has event time >= `wm` (late
data excepted). A reader of B that has processed B in order up to sequence s may therefore use,
for each live writer, the highest `wm` it published with `seq <= s`; its watermark is the
minimum of those over live writers, and never goes back. Algorithm and limits: docs/watermarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.spec.model import DEFAULT_BUFFERS, ResolvedBuffers

log = logging.getLogger("natsflow.watermark")

UNKNOWN = -1  # no watermark yet: nothing may close
PUBLISH_EVERY_S = 0.1
HEARTBEAT_S = 1.0
PUBLISHER_TIMEOUT_S = 10.0


def bucket_name(pipeline: str) -> str:
    return names.watermark_bucket(pipeline)


def replica_id() -> str:
    return os.environ.get("NATSFLOW_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    """Create the watermark bucket with `buffers`' replicas/storage if missing (`update`: also
    reconcile an existing one, what `provision` does)."""
    return await ensure_kv_bucket(js, bucket_name(pipeline), f"natsflow watermarks of pipeline {pipeline}",
                                  buffers, update)


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
            except Exception as exc:  # noqa: BLE001 - a missed heartbeat only delays windows
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
