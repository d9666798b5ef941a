"""The pipeline's lifecycle phase, Running or Paused, kept in JetStream KV so that every replica of
every vertex sees the same one, under `natsflow run`/`up` and on Kubernetes alike.

The bucket `nf_<pipeline>_lifecycle` holds one key, `phase`, whose value is JSON
`{"phase": "Paused", "by": "user@host", "at": "2026-11-30T18:40:00Z"}`. `natsflow pause/resume`
write it; `provision` writes the spec's `lifecycle.desiredPhase` when the spec sets one. Without a
value the spec's desired phase applies (Running by default).

Each vertex process keeps a `PhaseWatch` (a KV watch): a source checks `running` once per read
batch and, while Paused, reads nothing more from upstream (what it holds unacknowledged upstream
is stored once it runs again, or re-read after a crash); the other vertices keep draining their
buffers. Nothing is checked per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.spec import DEFAULT_BUFFERS, Pipeline, ResolvedBuffers

log = logging.getLogger("natsflow.lifecycle")

RUNNING = "Running"
PAUSED = "Paused"
PHASES = (RUNNING, PAUSED)


@dataclass(frozen=True)
class PhaseState:
    """The desired phase, who set it and when (ISO 8601 UTC); `by` is "spec" for the spec's own."""

    phase: str
    by: str = ""
    at: str = ""

    @property
    def running(self) -> bool:
        return self.phase != PAUSED

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes | None, default: PhaseState) -> PhaseState:
        """A stored value; anything unreadable counts as the default (and is logged), so a bad
        write by hand cannot stop a pipeline."""
        try:
            doc = json.loads(raw or b"")
            phase = doc["phase"]
            if phase not in PHASES:
                raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
            return cls(phase, str(doc.get("by", "")), str(doc.get("at", "")))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("lifecycle: unreadable phase value %r (%s); using %s", raw, exc, default.phase)
            return default


def spec_state(p: Pipeline) -> PhaseState:
    return PhaseState(p.spec.lifecycle.desired_phase, "spec")


def who() -> str:
    """`user@host` of whoever runs the command, for the record in the bucket."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    """The lifecycle bucket (create-only for workers, reconciled by `provision`)."""
    return await ensure_kv_bucket(js, names.lifecycle_bucket(pipeline),
                                  f"natsflow lifecycle phase of pipeline {pipeline}", buffers, update)


async def _bucket(js: JetStreamContext, p: Pipeline) -> KeyValue:
    await provision_bucket(js, p.name, p.buffers_for(None))
    return await js.key_value(names.lifecycle_bucket(p.name))


async def read_phase(js: JetStreamContext, p: Pipeline) -> PhaseState:
    """The stored phase, else the spec's."""
    kv = await _bucket(js, p)
    default = spec_state(p)
    try:
        entry = await kv.get(names.LIFECYCLE_KEY)
    except KeyNotFoundError:
        return default
    return PhaseState.decode(entry.value, default)


async def write_phase(js: JetStreamContext, p: Pipeline, phase: str, by: str) -> PhaseState:
    """Set the desired phase: every watching vertex follows within a KV round trip."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
    state = PhaseState(phase, by, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    kv = await _bucket(js, p)
    await kv.put(names.LIFECYCLE_KEY, state.encode())
    return state


class PhaseWatch:
    """One vertex process's view of the phase: `running` is set while the pipeline runs."""

    def __init__(self, p: Pipeline, vertex: str):
        self.p = p
        self.vertex = vertex
        self.default = spec_state(p)
        self.state = self.default
        self.running = asyncio.Event()
        if self.default.running:
            self.running.set()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.resumes = 0  # Paused -> Running transitions seen (a rate limit ramps up again)

    async def start(self, js: JetStreamContext, wait_ready: float = 5.0) -> None:
        """Watch the key; returns once the current value is known (or after `wait_ready`)."""
        kv = await _bucket(js, self.p)
        self._watcher = watcher = await kv.watch(names.LIFECYCLE_KEY)
        self._task = asyncio.create_task(self._pump(watcher), name=f"phase-watch-{self.vertex}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_ready)

    async def _pump(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the end of the current values
                self._ready.set()
                continue
            gone = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
            self._apply(self.default if gone else PhaseState.decode(entry.value, self.default))
            self._ready.set()

    def _apply(self, state: PhaseState) -> None:
        changed = state.running != self.state.running
        self.state = state
        if state.running:
            self.running.set()
        else:
            self.running.clear()
        if changed and state.running:
            self.resumes += 1
        if changed:
            log.info("vertex %s: pipeline %s (by %s at %s)", self.vertex,
                     "resumed" if state.running else "paused", state.by or "?", state.at or "?")

    async def wait_running(self, stopping: asyncio.Event) -> None:
        """Return once the pipeline runs, or once the vertex is stopping."""
        if self.running.is_set() or stopping.is_set():
            return
        waits = [asyncio.ensure_future(self.running.wait()), asyncio.ensure_future(stopping.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(nats_errors.Error, TimeoutError):
            if self._watcher is not None:
                await self._watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
