"""`natsflow run`: one machine, every vertex its own OS process, restarted when it dies."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from nats.aio.client import Client

from framework.connector import server_problems
from framework.isb.provision import provision
from framework.isb.reconcile import ProvisionError
from framework.local.embedded import EmbeddedCluster, EmbeddedNats, start_embedded
from framework.local.replicas import VertexGroup, is_program, side_input_manager_command, vertex_command
from framework.local.scaling import LagReader, ScaleDecision, desired_replicas, effective_cooldown
from framework.local.watch import FileWatch
from framework.runtime.ratelimit import at_limit
from framework.spec import Pipeline, SpecError, Vertex, load_pipeline
from framework.spec.secrets import check_pipeline
from framework.transport.settings import NatsSettings
from framework.watermark.proxy import WatermarkProxy, needs_proxy

log = logging.getLogger("natsflow.supervisor")

# vertex_command and side_input_manager_command moved to framework/local/replicas.py; these names
# stay importable from here.
__all__ = ["Supervisor", "embedded_size", "side_input_manager_command", "vertex_command", "vertex_fingerprint"]

def _progress(line: str) -> None:
    """Progress of long CLI work (draining on stop) for the person at the terminal: stderr,
    beside the log, never mixed into the vertices' prefixed stdout."""
    print(line, file=sys.stderr, flush=True)


def embedded_size(p: Pipeline) -> int:
    """Servers `natsflow run` starts without a URL: as many as the most replicas any buffer asks for."""
    return max(p.buffers_for(v.name).replicas for v in p.spec.vertices)


def process_order(p: Pipeline) -> list[Vertex]:
    """The vertices that run as processes (a fused chain as its first vertex), sinks and UDFs
    first, so sources never write before their readers exist."""
    running = set(p.process_names())
    return sorted((v for v in p.spec.vertices if v.name in running), key=lambda v: v.kind == "source")


def vertex_fingerprint(p: Pipeline, name: str) -> str:
    """Everything a vertex process reads from the spec (of each vertex of its fused chain): a
    change means its replicas must roll."""
    return json.dumps([{
        "vertex": p.vertex(n).model_dump(mode="json"),
        "out": [e.model_dump(mode="json") for e in p.out_edges(n)],
        "limits": p.limits_for(n).model_dump(),
        "watermark": p.spec.watermark.model_dump(mode="json"),
    } for n in p.chain_of(name) or [name]], sort_keys=True)


class Supervisor:
    """`natsflow run` (one replica per vertex) and `natsflow up` (autoscale=True: replicas follow
    each vertex's lag with the same rule KEDA applies, see framework/local/scaling.py)."""

    def __init__(self, pipeline_file: str | Path, settings: NatsSettings, data_dir: str | Path | None = None,
                 grace: float = 30.0, out: TextIO | None = None, autoscale: bool = False):
        self.file = Path(pipeline_file).resolve()
        self.settings = settings
        self.data_dir = Path(data_dir) if data_dir else Path.cwd() / ".natsflow"
        self.grace = grace
        self.out = out
        self.autoscale = autoscale
        self.embedded: EmbeddedNats | EmbeddedCluster | None = None
        self.groups: dict[str, VertexGroup] = {}
        self.decisions: list[tuple[float, str, int, int, str]] = []  # (time, vertex, from, to, reason)
        self._scaler: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None  # `natsflow up`: follows the pipeline file
        self.nc: Client | None = None
        self._sources: set[str] = set()
        self.side_input_manager: VertexGroup | None = None  # kept apart: its name is not a vertex's
        self._proxies: dict[str, asyncio.Task] = {}  # vertex -> its watermark proxy (program vertices)
        self._stop = asyncio.Event()  # set by SIGTERM/SIGINT, or when the connection is closed for good
        self.lost: str | None = None  # why the supervisor's NATS connection was closed, if it was

    @property
    def client(self) -> Client:
        """The supervisor's NATS connection (made by `start`)."""
        assert self.nc is not None, "the supervisor is not started"
        return self.nc

    async def start(self) -> None:
        p = load_pipeline(self.file)
        check_pipeline(p, str(self.file))  # a missing secret ends `run` here, naming the field and variable
        self.pipeline = p
        self._sources = {v.name for v in p.spec.vertices if v.kind == "source"}
        if not self.settings.url:
            size = embedded_size(p)
            self.embedded = await asyncio.to_thread(start_embedded, self.data_dir / "nats" / p.name, size)
            self.settings = self.settings.with_url(self.embedded.url)
            log.info("embedded %s with JetStream at %s (monitoring %s, data %s)",
                     "nats-server" if size == 1 else f"{size}-node nats-server cluster", self.embedded.url,
                     self.embedded.monitor_url, self.embedded.store_dir)
        # Checked before any vertex starts: bad credentials end `run` here with one line, instead of
        # every vertex failing the same way in a restart loop.
        self.nc = await self.settings.connect(f"natsflow-{p.name}-supervisor", stopping=self._stop,
                                              on_closed=self._connection_lost)
        self._check_server(p)
        for what, result in await provision(self.nc.jetstream(), p):
            log.info("provision: %s %s", what, result)
        base_env = self._vertex_env()
        await self._sync_side_input_manager(None, p, base_env)
        # Sinks and UDFs first, so sources never write before their readers exist.
        for v in process_order(p):
            cmd, extra = vertex_command(p, self.file, v.name)
            group = VertexGroup(v.name, cmd, {**base_env, **extra}, self.file.parent, self.out, is_program(p, v.name))
            self.groups[v.name] = group
            await group.scale_to(self.initial_replicas(v), self.grace)
        await asyncio.gather(*(g.started() for g in self.groups.values()))
        self._sync_watermark_proxies(p)
        log.info("pipeline %s running: %s", p.name, ", ".join(f"{n} x{len(g)}" for n, g in self.groups.items()))
        if self.autoscale:
            self._scaler = asyncio.create_task(self._autoscale())
            self._watcher = asyncio.create_task(FileWatch(self.file).follow(self._reload))

    def _vertex_env(self) -> dict[str, str]:
        """The environment every vertex process starts with (program vertices too: docs/protocol.md §2),
        including the grace it is given on stop, which it plans its drain with (§8)."""
        return {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1",
                "NATSFLOW_GRACE_SECONDS": f"{self.grace:g}"}

    def _connection_lost(self, message: str) -> None:
        """The server closed our connection for good: stop every vertex, then exit non-zero."""
        log.error("%s; stopping the pipeline", message)
        self.lost = message
        self._stop.set()

    async def _reload(self) -> None:
        """`natsflow up` follows edits of the pipeline file: new buffers first, then new vertices,
        then changed vertices rolled replica by replica (new one ready before an old one drains)."""
        try:
            new = load_pipeline(self.file)
            check_pipeline(new, str(self.file))
            await self.apply(new)
        except SpecError as exc:
            log.error("pipeline file changed but is not valid; still running the previous version:\n%s", exc)
        except ProvisionError as exc:
            log.error("pipeline file changed but the servers refuse it; still running the previous version: %s",
                      exc)
        except Exception:
            log.exception("applying the changed pipeline failed")

    def _check_server(self, p: Pipeline) -> None:
        """Settings this server cannot carry (an HTTP body limit above its max_payload) fail here,
        not as a vertex that dies at start and is restarted for ever."""
        problems = server_problems(p, self.client.max_payload)
        if problems:
            raise SpecError(str(self.file), problems)

    async def apply(self, new: Pipeline) -> None:
        old = self.pipeline
        self._check_server(new)
        for what, result in await provision(self.client.jetstream(), new):
            if result != "unchanged":
                log.info("update: %s %s", what, result)
        new_names = set(new.process_names())
        for name in [n for n in self.groups if n not in new_names]:
            log.info("update: vertex %s removed", name)
            gone = self.groups.pop(name)
            gone.removed = True
            await gone.scale_to(0, self.grace)
        base_env = self._vertex_env()
        await self._sync_side_input_manager(old, new, base_env)
        for v in process_order(new):
            cmd, extra = vertex_command(new, self.file, v.name)
            group = self.groups.get(v.name)
            if group is None:
                log.info("update: vertex %s added", v.name)
                group = self.groups[v.name] = VertexGroup(v.name, cmd, {**base_env, **extra}, self.file.parent,
                                                          self.out, is_program(new, v.name))
                await group.scale_to(self.initial_replicas(v), self.grace)
            elif vertex_fingerprint(old, v.name) != vertex_fingerprint(new, v.name):
                log.info("update: vertex %s changed; rolling %d replica(s)", v.name, len(group))
                group.cmd, group.env, group.program = cmd, {**base_env, **extra}, is_program(new, v.name)
                await group.roll(self.grace)
        self.pipeline = new
        self._sources = {v.name for v in new.spec.vertices if v.kind == "source"}
        self._sync_watermark_proxies(new)

    def _sync_watermark_proxies(self, p: Pipeline) -> None:
        """A watermark proxy task (in this process) for every program vertex with out-edges;
        restarted on every update, since its out-buffers may have changed."""
        for task in self._proxies.values():
            task.cancel()
        self._proxies = {v.name: asyncio.create_task(WatermarkProxy(self.client, p, v.name).run(asyncio.Event()),
                                                     name=f"wmproxy-{v.name}")
                         for v in p.spec.vertices if needs_proxy(p, v.name)}

    async def _sync_side_input_manager(self, old: Pipeline | None, new: Pipeline, env: dict[str, str]) -> None:
        """One manager process while the pipeline declares side inputs; restarted when they change
        (the values stay in KV meanwhile, so readers never wait for it)."""
        def dump(p: Pipeline | None) -> list:
            return [si.model_dump(mode="json") for si in p.spec.side_inputs] if p is not None else []

        group = self.side_input_manager
        if group is not None and dump(old) == dump(new):
            return
        if group is not None:
            log.info("update: side inputs changed; restarting the side-input manager")
            await group.scale_to(0, self.grace)
        if new.spec.side_inputs:
            group = VertexGroup("sideinputs", side_input_manager_command(self.file), env, self.file.parent, self.out)
            await group.scale_to(1, self.grace)
        self.side_input_manager = group if new.spec.side_inputs else None

    def initial_replicas(self, v) -> int:
        if not self.autoscale or v.kind == "source":
            return max(1, v.scale.min) if self.autoscale else 1
        return v.scale.min

    async def _autoscale(self) -> None:
        """Every pollingInterval: lag -> desired replicas (KEDA's rule) -> start or drain processes."""
        last_active: dict[str, float] = {}
        next_poll: dict[str, float] = {}
        while True:
            p = self.pipeline  # the file may have been updated
            reader = LagReader(self.client.jetstream(), p)
            scaled = [v for v in p.spec.vertices if v.kind != "source" and v.name in self.groups]
            tick = min((v.scale.polling_interval for v in scaled), default=1.0)
            now = time.monotonic()
            for v in scaled:
                if now < next_poll.get(v.name, 0.0):
                    continue
                next_poll[v.name] = now + v.scale.polling_interval
                try:
                    lag = await reader.lag(v.name)
                except Exception as exc:
                    log.warning("autoscale: cannot read lag of %s: %s", v.name, exc)
                    continue
                group = self.groups.get(v.name)
                if group is None or group.removed:
                    continue  # removed by an update while we read its lag
                since = now - last_active[v.name] if v.name in last_active else None
                d = desired_replicas(lag, len(group), v.scale, since, cooldown=effective_cooldown(p, v.name))
                if d.desired > len(group) > 0 and await at_limit(self.client.jetstream(), p, v.name):
                    # Numaflow's rule: more replicas of a vertex at its rate limit would not read more
                    d = ScaleDecision(len(group), d.active, f"{d.reason}; held: at its rate limit")
                if d.active:
                    last_active[v.name] = now
                if d.desired != len(group):
                    log.info("autoscale %s: %d -> %d replicas (%s)", v.name, len(group), d.desired, d.reason)
                    self.decisions.append((time.time(), v.name, len(group), d.desired, d.reason))
                    await group.scale_to(d.desired, self.grace)
            await asyncio.sleep(tick / 2)

    async def stop(self) -> None:
        for task in (self._scaler, self._watcher, *self._proxies.values()):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        # Sources first, so nothing new enters while the rest drains.
        sources = [g for g in self.groups.values() if g.name in self._sources]
        others = [g for g in self.groups.values() if g.name not in self._sources]
        _progress(f"stopping {self.file.name}: sources first, then the rest drains (up to {self.grace:g}s each)")
        await self._drain(sources)
        await self._drain(others)
        if self.side_input_manager is not None:
            await self.side_input_manager.scale_to(0, self.grace)
        if self.nc is not None:
            await self.nc.close()
        if self.embedded is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.stop)
        log.info("pipeline stopped")

    async def _drain(self, groups: list[VertexGroup]) -> None:
        """Stops the groups together; one progress line per vertex as it finishes draining."""

        async def one(g: VertexGroup) -> None:
            n, began = len(g), time.monotonic()
            await g.scale_to(0, self.grace)
            if n:
                _progress(f"draining {g.name} ({n} replica{'' if n == 1 else 's'})... "
                          f"done in {time.monotonic() - began:.1f}s")

        await asyncio.gather(*(one(g) for g in groups))

    async def run_until_signalled(self) -> str | None:
        """Run until SIGTERM/SIGINT or a connection closed for good; returns why it was lost, if so."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self.start()
        except BaseException:
            await self._abandon()  # e.g. a provision the servers refuse: no embedded server left behind
            raise
        try:
            await self._stop.wait()
        finally:
            log.info("stopping pipeline")
            await self.stop()
        return self.lost

    async def _abandon(self) -> None:
        """After a failed start: end whatever it started, quietly (the error is the message)."""
        for group in [*self.groups.values(), *([self.side_input_manager] if self.side_input_manager else [])]:
            await group.scale_to(0, self.grace)
        if self.nc is not None:
            await self.nc.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
