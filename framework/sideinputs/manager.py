"""Side inputs: values a manager process computes on a schedule and every listed vertex reads live.

The manager (`natsflow sideinputs FILE`, one process per pipeline) runs each `spec.sideInputs[]`
handler once at start and then on its trigger, and puts the result under the side input's name in
the JetStream KV bucket `nf_<pipeline>_sideinputs`. A vertex listing `sideInputs: [name]` watches
those keys, so `side_input(name)` in its handler returns the newest value without a restart, and
the vertex reads no message before every side input it lists has a value.

Encoding of what a handler returns: `bytes` are stored as they are, `str` as UTF-8, `None` means
"no new value" (the previous one stays), anything else as JSON. `side_input(name)` returns the
stored bytes; `side_input_json(name)` decodes them as JSON once per new value.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext
from prometheus_client import Counter

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.observability.metrics import VertexMetrics
from framework.sdk import handler_kind
from framework.sideinputs import files as side_input_files
from framework.sideinputs.schedule import parse_schedule
from framework.spec import (
    DEFAULT_BUFFERS,
    HandlerError,
    Pipeline,
    ResolvedBuffers,
    SideInput,
    load_handler,
    load_pipeline,
)
from framework.transport.settings import NatsSettings

if TYPE_CHECKING:
    from framework.numaflow.sideinput import NumaflowSideInput

log = logging.getLogger("natsflow.sideinputs")

MANAGER = "sideinputs"  # the manager's name in logs, metrics and rendered objects
_DELETES = ("DEL", "PURGE")


def bucket_name(pipeline: str) -> str:
    return names.sideinputs_bucket(pipeline)


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    """Create the side-input bucket with `buffers`' replicas/storage if missing (`update`: also
    reconcile an existing one, what `provision` does). Its values never expire."""
    return await ensure_kv_bucket(js, bucket_name(pipeline), f"natsflow side inputs of pipeline {pipeline}",
                                  buffers, update)


def encode_value(result: Any) -> bytes | None:
    """What a side-input handler returned, as the bytes to store; None keeps the previous value."""
    if result is None:
        return None
    if isinstance(result, (bytes, bytearray, memoryview)):
        return bytes(result)
    if isinstance(result, str):
        return result.encode()
    try:
        return json.dumps(result, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"side-input handler returned {type(result).__name__}, which is not bytes, str or "
                        f"JSON-serialisable: {exc}") from None


# ---- reading: the SDK calls and the watch that keeps them current (in each vertex process) -----


class SideInputError(LookupError):
    pass


_values: dict[str, bytes] = {}
_decoded: dict[str, tuple[bytes, Any]] = {}
_declared: tuple[str, ...] = ()


def side_input(name: str) -> bytes:
    """The newest value of side input `name` (one listed in this vertex's `sideInputs`)."""
    try:
        return _values[name]
    except KeyError:
        if name not in _declared:
            listed = ", ".join(_declared) or "none"
            raise SideInputError(f"side input {name!r} is not listed in this vertex's sideInputs "
                                 f"(listed: {listed})") from None
        raise SideInputError(f"side input {name!r} has no value yet") from None


def side_input_json(name: str) -> Any:
    """`side_input(name)` decoded as JSON; decoded once per new value and shared, so don't mutate it."""
    raw = side_input(name)
    cached = _decoded.get(name)
    if cached is None or cached[0] is not raw:
        cached = _decoded[name] = (raw, json.loads(raw))
    return cached[1]


class SideInputWatcher:
    """Keeps this process's side-input values current from the KV bucket (a KV watch)."""

    def __init__(self, kv, names: list[str]):
        global _declared
        self._kv = kv
        self.names = tuple(names)
        _declared = self.names
        self.complete = asyncio.Event()
        self.replayed = asyncio.Event()  # the bucket's current entries have been delivered
        self._task: asyncio.Task | None = None

    @classmethod
    async def start_for(cls, js: JetStreamContext, pipeline: str, names: list[str],
                        buffers: ResolvedBuffers = DEFAULT_BUFFERS) -> SideInputWatcher:
        await provision_bucket(js, pipeline, buffers)  # the manager may not have started yet
        watcher = cls(await js.key_value(bucket_name(pipeline)), names)
        await watcher.start()
        return watcher

    async def start(self) -> None:
        updates = await self._kv.watchall()

        async def pump() -> None:
            async for entry in updates:
                if entry is None:
                    self.replayed.set()
                elif entry.key in self.names:
                    self.observe(entry.key, entry.value, entry.operation, entry.revision)

        self._task = asyncio.create_task(pump())

    def observe(self, name: str, value: bytes | None, operation: str | None, revision: int) -> None:
        if operation in _DELETES:
            log.warning("side input %s was deleted from the bucket; keeping its previous value", name)
            return
        first = name not in _values
        _values[name] = value or b""
        side_input_files.publish(name, _values[name])
        log.info("side input %s %s (revision %d, %d bytes)", name, "received" if first else "updated",
                 revision, len(_values[name]))
        if all(n in _values for n in self.names):
            self.complete.set()

    def missing(self) -> list[str]:
        return [n for n in self.names if n not in _values]

    async def wait_complete(self, stopping: asyncio.Event) -> bool:
        """Block until every listed side input has a value (True) or the worker is stopping (False)."""
        # Values already in the bucket arrive with the watch's replay: only say we wait when the
        # replay is over and something is still missing.
        await self._until(self.replayed, stopping)
        if not self.complete.is_set() and not stopping.is_set():
            log.info("waiting for side inputs: %s", ", ".join(self.missing()))
            await self._until(self.complete, stopping)
            if self.complete.is_set():
                log.info("side inputs ready: %s", ", ".join(self.names))
        return self.complete.is_set() and not stopping.is_set()

    @staticmethod
    async def _until(event: asyncio.Event, stopping: asyncio.Event) -> None:
        waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stopping.wait())]
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


# ---- the manager ---------------------------------------------------------------------------


class SideInputManager:
    """Runs every side input's handler on its trigger and stores the results; one per pipeline."""

    def __init__(self, p: Pipeline, settings: NatsSettings, base_dir: Path | None = None):
        self.p = p
        self.settings = settings
        self.base_dir = base_dir
        self.stopping = asyncio.Event()
        self._threads: dict[str, asyncio.Future] = {}  # side input -> its handler's running thread
        self.programs: list[NumaflowSideInput] = []  # the Numaflow retrievers
        self.metrics = VertexMetrics(p.name, MANAGER)
        self.runs = Counter("side_input_runs_total", "side-input handler runs, by result (stored, unchanged, "
                            "no_value, error)", ("pipeline", "side_input", "result"), registry=self.metrics.registry)

    async def run(self) -> None:
        # Import every handler up front: one that cannot be loaded ends the manager with an error
        # naming it (inside its task it would die unseen, leaving the vertices waiting forever).
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        handlers: dict[str, Callable[[], Any]] = {}
        for i, si in enumerate(self.p.spec.side_inputs):
            if si.handler is None:
                continue
            try:
                handlers[si.name] = load_handler(si.handler, self.base_dir)
            except HandlerError as exc:
                raise SystemExit(f"spec.sideInputs[{i}].handler: {exc}") from None
        try:
            for i, si in enumerate(self.p.spec.side_inputs):
                if si.numaflow is not None:  # started once the handlers import: a bad one ends the run first
                    handlers[si.name] = await self._start_program(i, si)
            await self._serve(handlers)
        finally:
            for program in self.programs:
                await program.close()

    async def _start_program(self, i: int, si: SideInput) -> Callable[[], Any]:
        """Start a side input's Numaflow retriever program; it runs until the manager stops."""
        # Imported here: grpc and the SDK's protos are the optional extra natsflow[numaflow].
        from framework.numaflow.sideinput import NumaflowSideInput, side_input_launch

        retriever = NumaflowSideInput(side_input_launch(self.p.name, i, si, self.base_dir))
        self.programs.append(retriever)
        await retriever.start()
        return retriever

    async def _serve(self, handlers: dict[str, Callable[[], Any]]) -> None:
        self.nc = await self.settings.connect(f"natsflow-{self.p.name}-{MANAGER}", stopping=self.stopping)
        js = self.nc.jetstream()
        await provision_bucket(js, self.p.name, self.p.buffers_for(None))
        self.kv = await js.key_value(bucket_name(self.p.name))
        port = os.environ.get("NATSFLOW_METRICS_PORT")
        if port:
            self.metrics.serve(int(port), ready=lambda: self.nc.is_connected and not self.stopping.is_set())
        log.info("side-input manager of %s started: %s", self.p.name,
                 ", ".join(f"{si.name} ({si.trigger.schedule})" for si in self.p.spec.side_inputs))
        tasks = [asyncio.create_task(self._keep_current(si, handlers[si.name])) for si in self.p.spec.side_inputs]
        try:
            await self.stopping.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 10)
            stats = {k: v for k, v in self.metrics.snapshot().items() if k.startswith("side_input")}
            log.info("side-input manager stopped; stats %s", json.dumps(stats))

    async def _keep_current(self, si: SideInput, fn: Callable[[], Any]) -> None:
        schedule = parse_schedule(si.trigger.schedule)
        stored: bytes | None = None
        while not self.stopping.is_set():
            started = time.time()
            stored = await self.refresh(si, fn, stored)
            # Fire times follow the schedule from the run's start, so a slow handler does not drift
            # an `@every`; a run that overran its slot starts the next one at once.
            delay = max(0.0, schedule.next_after(started) - time.time())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def _call(self, si: SideInput, fn: Callable[[], Any]) -> Any:
        """The handler's result. A plain function runs in a thread, which a timeout cannot stop:
        while one is still running, no second one starts (hung runs must not pile up)."""
        if handler_kind(fn) == "async":
            return await fn()
        running = self._threads.get(si.name)
        if running is not None and not running.done():
            raise RuntimeError("the previous run is still going (timed out earlier); not starting another")
        self._threads[si.name] = asyncio.get_running_loop().run_in_executor(None, fn)
        return await asyncio.shield(self._threads[si.name])

    async def refresh(self, si: SideInput, fn: Callable[[], Any], stored: bytes | None) -> bytes | None:
        """One run of the handler; returns what the bucket now holds (as far as this process knows).
        A failing handler or put is logged and counted, and the previous value stays in force."""
        count = self.runs.labels(pipeline=self.p.name, side_input=si.name, result="error")
        try:
            result = await asyncio.wait_for(self._call(si, fn), si.trigger.timeout)
            value = encode_value(result)
        except TimeoutError:
            count.inc()
            log.warning("side input %s: handler %s gave no result within %gs; keeping the previous value",
                        si.name, si.source, si.trigger.timeout)
            return stored
        except Exception as exc:
            count.inc()
            log.warning("side input %s: handler %s failed (%s: %s); keeping the previous value",
                        si.name, si.source, type(exc).__name__, exc)
            return stored
        if value is None or value == stored:
            self.runs.labels(pipeline=self.p.name, side_input=si.name,
                             result="no_value" if value is None else "unchanged").inc()
            return stored
        try:
            revision = await self.kv.put(si.name, value)
        except Exception as exc:
            count.inc()
            log.warning("side input %s: storing the new value failed (%s: %s); will retry", si.name,
                        type(exc).__name__, exc)
            return stored
        self.runs.labels(pipeline=self.p.name, side_input=si.name, result="stored").inc()
        log.info("side input %s stored (revision %d, %d bytes)", si.name, revision, len(value))
        return value


async def run_manager(pipeline_file: str | Path, settings: NatsSettings) -> None:
    path = Path(pipeline_file)
    p = load_pipeline(path, check_handlers=False)
    if not p.spec.side_inputs:
        raise SystemExit(f"{path}: the pipeline declares no spec.sideInputs; nothing to manage")
    await SideInputManager(p, settings, path.parent).run()
