"""A rate limit shared by every replica of a vertex (`limits.rateLimit`), with JetStream KV as the
token store: no Redis.

The bucket `nf_<pipeline>_ratelimit` holds one key per limited vertex, whose value is the current
one-second window: `{"w": <epoch second>, "used": <tokens taken in it>, "ramp": <epoch seconds the
ramp started>, "prev": <tokens taken in the second before>}`. A replica takes tokens for each batch
it read by a compare-and-set on that entry (a new second starts at 0); when the window is spent it
waits for the next second. So the replicas together take at most the limit in each second, whichever
of them reads.

The ramp restarts from `min` when the vertex starts (no window written for `QUIET_S`) and when the
pipeline resumes after a pause. One KV round trip or two per read batch; nothing per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from dataclasses import dataclass

from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.runtime.phase import PhaseWatch
from framework.spec import DEFAULT_BUFFERS, Pipeline, ResolvedBuffers
from framework.spec.settings import RateLimit

log = logging.getLogger("natsflow.ratelimit")

QUIET_S = 5.0  # no tokens taken for this long: the vertex (re)starts and ramps up again
AT_LIMIT = 0.9  # the share of its limit a vertex uses in a window to count as at its limit


@dataclass(frozen=True)
class Window:
    second: int
    used: int
    ramp: float
    prev: int = 0  # tokens taken in the second before (what the autoscaler looks at early in a second)

    def encode(self) -> bytes:
        doc = {"w": self.second, "used": self.used, "ramp": self.ramp, "prev": self.prev}
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Window | None:
        try:
            doc = json.loads(raw or b"")
            return cls(int(doc["w"]), int(doc["used"]), float(doc["ramp"]), int(doc.get("prev", 0)))
        except (ValueError, KeyError, TypeError):
            return None


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    return await ensure_kv_bucket(js, names.ratelimit_bucket(pipeline),
                                  f"natsflow rate-limit tokens of pipeline {pipeline}", buffers, update)


def limited(p: Pipeline) -> bool:
    return any(p.limits_for(v.name).rate_limit is not None for v in p.spec.vertices)


async def at_limit(js: JetStreamContext, p: Pipeline, vertex: str, now: float | None = None) -> bool:
    """The vertex took at least 90% of its limit in the current or the last second: more replicas
    would not read more (the autoscaler's rule: it does not scale such a vertex up)."""
    cfg = p.limits_for(vertex).rate_limit
    if cfg is None:
        return False
    now = time.time() if now is None else now
    try:
        kv = await js.key_value(names.ratelimit_bucket(p.name))
        window = Window.decode((await kv.get(vertex)).value)
    except (KeyNotFoundError, nats_errors.Error, TimeoutError):
        return False
    if window is None or window.second < math.floor(now) - 1:
        return False
    limit = cfg.at(window.second - window.ramp)
    return max(window.used, window.prev) >= AT_LIMIT * limit


class RateLimiter:
    """One replica's share of its vertex's limit: `acquire(n)` returns once n tokens are taken."""

    def __init__(self, kv: KeyValue, vertex: str, cfg: RateLimit, stopping: asyncio.Event,
                 phase: PhaseWatch | None = None):
        self.kv = kv
        self.vertex = vertex
        self.cfg = cfg
        self.stopping = stopping
        self.phase = phase
        self._resumes = phase.resumes if phase is not None else 0
        self.waited = 0.0  # seconds spent waiting for tokens (a log line on exit)

    @classmethod
    async def start(cls, js: JetStreamContext, p: Pipeline, vertex: str, stopping: asyncio.Event,
                    phase: PhaseWatch | None = None) -> RateLimiter | None:
        cfg = p.limits_for(vertex).rate_limit
        if cfg is None:
            return None
        await provision_bucket(js, p.name, p.buffers_for(None))
        return cls(await js.key_value(names.ratelimit_bucket(p.name)), vertex, cfg, stopping, phase)

    def _ramp(self, current: Window | None, now: float) -> float:
        resumed = self.phase is not None and self.phase.resumes != self._resumes
        if current is None or resumed or now - current.second > QUIET_S + 1:
            return now
        return current.ramp

    async def acquire(self, n: int) -> None:
        """Take n tokens, waiting for later seconds while the current one is spent (returns early
        when the vertex stops: what it holds is then processed or handed back as usual)."""
        while n > 0 and not self.stopping.is_set():
            try:
                entry = await self.kv.get(self.vertex)
                current, revision = Window.decode(entry.value), entry.revision
            except KeyNotFoundError:
                current, revision = None, None
            now = time.time()
            second = math.floor(now)
            ramp = self._ramp(current, now)
            same = current is not None and current.second == second and ramp == current.ramp
            used = current.used if same and current is not None else 0
            prev = current.prev if same and current is not None else (
                current.used if current is not None and current.second == second - 1 else 0)
            take = min(n, self.cfg.at(now - ramp) - used)
            if take <= 0:
                await self._sleep(second + 1 - now)
                continue
            window = Window(second, used + take, ramp, prev)
            try:
                if revision is None:
                    await self.kv.create(self.vertex, window.encode())
                else:
                    await self.kv.update(self.vertex, window.encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica took tokens meanwhile: read again
            if self.phase is not None:
                self._resumes = self.phase.resumes
            n -= take

    async def _sleep(self, seconds: float) -> None:
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), max(0.001, seconds))
        self.waited += time.monotonic() - started
