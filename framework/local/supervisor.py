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

from framework.isb.provision import provision
from framework.isb.reconcile import ProvisionError
from framework.transport.settings import NatsSettings
from framework.connector import server_problems
from framework.local.embedded import EmbeddedCluster, EmbeddedNats, free_port, start_embedded
from framework.isb.descriptor import vertex_descriptor
from framework.local.scaling import LagReader, desired_replicas, effective_cooldown
from framework.spec.secrets import check_pipeline, udf_env
from framework.spec.model import Pipeline, SpecError, load_pipeline
from framework.watermark.proxy import WatermarkProxy, needs_proxy

log = logging.getLogger("natsflow.supervisor")

RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)
HEALTHY_AFTER_S = 30.0
LINE_LIMIT = 1 << 20


class VertexProcess:
    """One replica of one vertex: starts it, prefixes its output, restarts it with backoff."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, out=None):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.out = out or sys.stdout
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.started = asyncio.Event()
        self.ready = asyncio.Event()  # the worker logged that it is serving
        self._ready_mark = f" {name.split('#')[0]} ("

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name=f"vertex-{self.name}")

    async def _keep_running(self) -> None:
        failures = 0
        while not self._stopping:
            began = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                limit=LINE_LIMIT)
            self.started.set()
            await self._pump(self.proc)
            code = await self.proc.wait()
            if self._stopping:
                break
            failures = 0 if time.monotonic() - began > HEALTHY_AFTER_S else failures + 1
            delay = RESTART_BACKOFF[min(failures, len(RESTART_BACKOFF) - 1)]
            self.restarts += 1
            log.warning("vertex %s exited with code %s; restart #%d in %.1fs", self.name, code, self.restarts, delay)
            await asyncio.sleep(delay)

    async def _pump(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        prefix = f"[{self.name}] "
        while True:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line over LINE_LIMIT: pass on what is buffered, keep pumping
                line = await proc.stdout.read(LINE_LIMIT)
            if not line:
                return
            text = line.decode(errors="replace")
            if not self.ready.is_set() and self._ready_mark in text and ") started" in text:
                self.ready.set()
            self.out.write(prefix + text)
            self.out.flush()

    async def stop(self, grace: float) -> None:
        self._stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                log.warning("vertex %s did not stop within %.0fs; killing it", self.name, grace)
                proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def kill(self) -> None:
        """SIGKILL the current process (fault tests); the supervisor restarts it."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def _progress(line: str) -> None:
    """Progress of long CLI work (draining on stop) for the person at the terminal: stderr,
    beside the log, never mixed into the vertices' prefixed stdout."""
    print(line, file=sys.stderr, flush=True)


def side_input_manager_command(pipeline_file: Path) -> list[str]:
    return [sys.executable, "-m", "framework.cli", "sideinputs", str(pipeline_file)]


def vertex_command(p: Pipeline, pipeline_file: Path, vertex: str) -> tuple[list[str], dict[str, str]]:
    v = p.vertex(vertex)
    if v.udf is not None and v.udf.is_program:
        if not v.udf.command:
            index = [x.name for x in p.spec.vertices].index(vertex)
            raise SpecError(str(pipeline_file), [(f"spec.vertices[{index}].udf.command",
                                                  f"vertex {vertex!r} has only udf.container, which runs when rendered "
                                                  "for Kubernetes; add udf.command to run it on this machine")])
        return list(v.udf.command), {"NATSFLOW_DESCRIPTOR": json.dumps(vertex_descriptor(p, vertex)), **udf_env(p, v)}
    extra = udf_env(p, v)
    return [sys.executable, "-m", "framework.cli", "vertex", "--pipeline", str(pipeline_file),
            "--vertex", vertex], extra


class VertexGroup:
    """The replicas of one vertex; `scale_to` starts new ones or drains the newest (SIGTERM),
    `roll` replaces each replica by a new process, one at a time, new first."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, out=None):
        self.name, self.cmd, self.env, self.cwd, self.out = name, cmd, env, cwd, out
        self.replicas: list[VertexProcess] = []
        self._lock = asyncio.Lock()
        self._spawned = 0
        self.removed = False  # set when the vertex left the pipeline: never start it again

    def __len__(self) -> int:
        return len(self.replicas)

    def _spawn(self) -> VertexProcess:
        label = self.name if self._spawned == 0 else f"{self.name}#{self._spawned}"
        self._spawned += 1
        vp = VertexProcess(label, self.cmd, {**self.env, "NATSFLOW_METRICS_PORT": str(free_port())}, self.cwd, self.out)
        vp.start()
        return vp

    async def scale_to(self, n: int, grace: float) -> None:
        async with self._lock:
            while len(self.replicas) < n and not self.removed:
                self.replicas.append(self._spawn())
            if len(self.replicas) > n:
                extra, self.replicas = self.replicas[n:], self.replicas[:n]
                await asyncio.gather(*(vp.stop(grace) for vp in extra))

    async def roll(self, grace: float, ready_timeout: float = 60.0) -> None:
        """Start a replacement, wait until it serves, then drain one old replica; repeat. (A
        reduce too: partition leases keep two replicas from reading one partition.)"""
        async with self._lock:
            for i, old in enumerate(list(self.replicas)):
                new = self._spawn()
                try:
                    await asyncio.wait_for(new.ready.wait(), ready_timeout)
                except asyncio.TimeoutError:
                    log.error("rolling %s: the new replica did not become ready in %.0fs; keeping the old one",
                              self.name, ready_timeout)
                    await new.stop(grace)
                    return
                self.replicas[i] = new
                await old.stop(grace)
                log.info("rolling %s: replica %d of %d replaced", self.name, i + 1, len(self.replicas))

    async def started(self) -> None:
        await asyncio.gather(*(vp.started.wait() for vp in self.replicas))


def embedded_size(p: Pipeline) -> int:
    """Servers `natsflow run` starts without a URL: as many as the most replicas any buffer asks for."""
    return max(p.buffers_for(v.name).replicas for v in p.spec.vertices)


def vertex_fingerprint(p: Pipeline, name: str) -> str:
    """Everything a vertex process reads from the spec: a change means its replicas must roll."""
    return json.dumps({
        "vertex": p.vertex(name).model_dump(mode="json"),
        "out": [e.model_dump(mode="json") for e in p.out_edges(name)],
        "limits": p.limits_for(name).model_dump(),
        "watermark": p.spec.watermark.model_dump(mode="json"),
    }, sort_keys=True)


class Supervisor:
    """`natsflow run` (one replica per vertex) and `natsflow up` (autoscale=True: replicas follow
    each vertex's lag with the same rule KEDA applies, see framework/local/scaling.py)."""

    def __init__(self, pipeline_file: str | Path, settings: NatsSettings, data_dir: str | Path | None = None,
                 grace: float = 30.0, out=None, autoscale: bool = False):
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
        self._sources: set[str] = set()
        self.side_input_manager: VertexGroup | None = None  # kept apart: its name is not a vertex's
        self._proxies: dict[str, asyncio.Task] = {}  # vertex -> its watermark proxy (program vertices)
        self._stop = asyncio.Event()  # set by SIGTERM/SIGINT, or when the connection is closed for good
        self.lost: str | None = None  # why the supervisor's NATS connection was closed, if it was

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
        base_env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        await self._sync_side_input_manager(None, p, base_env)
        # Sinks and UDFs first, so sources never write before their readers exist.
        for v in sorted(p.spec.vertices, key=lambda v: v.kind == "source"):
            cmd, extra = vertex_command(p, self.file, v.name)
            group = VertexGroup(v.name, cmd, {**base_env, **extra}, self.file.parent, self.out)
            self.groups[v.name] = group
            await group.scale_to(self.initial_replicas(v), self.grace)
        await asyncio.gather(*(g.started() for g in self.groups.values()))
        self._sync_watermark_proxies(p)
        log.info("pipeline %s running: %s", p.name, ", ".join(f"{n} x{len(g)}" for n, g in self.groups.items()))
        if self.autoscale:
            self._scaler = asyncio.create_task(self._autoscale())
            self._watcher = asyncio.create_task(self._watch_file())

    def _connection_lost(self, message: str) -> None:
        """The server closed our connection for good: stop every vertex, then exit non-zero."""
        log.error("%s; stopping the pipeline", message)
        self.lost = message
        self._stop.set()

    async def _watch_file(self) -> None:
        """`natsflow up` follows edits of the pipeline file: new buffers first, then new vertices,
        then changed vertices rolled replica by replica (new one ready before an old one drains)."""
        seen = self.file.read_text()
        while True:
            await asyncio.sleep(1.0)
            try:
                text = self.file.read_text()
            except OSError:
                continue
            if text == seen:
                continue
            seen = text
            try:
                new = load_pipeline(self.file)
                check_pipeline(new, str(self.file))
                await self.apply(new)
            except SpecError as exc:
                log.error("pipeline file changed but is not valid; still running the previous version:\n%s", exc)
            except ProvisionError as exc:
                log.error("pipeline file changed but the servers refuse it; still running the previous version: %s",
                          exc)
            except Exception:  # noqa: BLE001 - keep supervising whatever happens in one update
                log.exception("applying the changed pipeline failed")

    def _check_server(self, p: Pipeline) -> None:
        """Settings this server cannot carry (an HTTP body limit above its max_payload) fail here,
        not as a vertex that dies at start and is restarted for ever."""
        problems = server_problems(p, self.nc.max_payload)
        if problems:
            raise SpecError(str(self.file), problems)

    async def apply(self, new: Pipeline) -> None:
        old = self.pipeline
        self._check_server(new)
        for what, result in await provision(self.nc.jetstream(), new):
            if result != "unchanged":
                log.info("update: %s %s", what, result)
        new_names = {v.name for v in new.spec.vertices}
        for name in [n for n in self.groups if n not in new_names]:
            log.info("update: vertex %s removed", name)
            group = self.groups.pop(name)
            group.removed = True
            await group.scale_to(0, self.grace)
        base_env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        await self._sync_side_input_manager(old, new, base_env)
        for v in sorted(new.spec.vertices, key=lambda v: v.kind == "source"):
            cmd, extra = vertex_command(new, self.file, v.name)
            group = self.groups.get(v.name)
            if group is None:
                log.info("update: vertex %s added", v.name)
                group = self.groups[v.name] = VertexGroup(v.name, cmd, {**base_env, **extra}, self.file.parent, self.out)
                await group.scale_to(self.initial_replicas(v), self.grace)
            elif vertex_fingerprint(old, v.name) != vertex_fingerprint(new, v.name):
                log.info("update: vertex %s changed; rolling %d replica(s)", v.name, len(group))
                group.cmd, group.env = cmd, {**base_env, **extra}
                await group.roll(self.grace)
        self.pipeline = new
        self._sources = {v.name for v in new.spec.vertices if v.kind == "source"}
        self._sync_watermark_proxies(new)

    def _sync_watermark_proxies(self, p: Pipeline) -> None:
        """A watermark proxy task (in this process) for every program vertex with out-edges;
        restarted on every update, since its out-buffers may have changed."""
        for task in self._proxies.values():
            task.cancel()
        self._proxies = {v.name: asyncio.create_task(WatermarkProxy(self.nc, p, v.name).run(asyncio.Event()),
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
            reader = LagReader(self.nc.jetstream(), p)
            scaled = [v for v in p.spec.vertices if v.kind != "source" and v.name in self.groups]
            tick = min((v.scale.polling_interval for v in scaled), default=1.0)
            now = time.monotonic()
            for v in scaled:
                if now < next_poll.get(v.name, 0.0):
                    continue
                next_poll[v.name] = now + v.scale.polling_interval
                try:
                    lag = await reader.lag(v.name)
                except Exception as exc:  # noqa: BLE001 - a missed poll only delays scaling
                    log.warning("autoscale: cannot read lag of %s: %s", v.name, exc)
                    continue
                group = self.groups.get(v.name)
                if group is None or group.removed:
                    continue  # removed by an update while we read its lag
                since = now - last_active[v.name] if v.name in last_active else None
                d = desired_replicas(lag, len(group), v.scale, since, cooldown=effective_cooldown(p, v.name))
                if d.active:
                    last_active[v.name] = now
                if d.desired != len(group):
                    log.info("autoscale %s: %d -> %d replicas (%s)", v.name, len(group), d.desired, d.reason)
                    self.decisions.append((time.time(), v.name, len(group), d.desired, d.reason))
                    await group.scale_to(d.desired, self.grace)
            await asyncio.sleep(tick / 2)

    async def stop(self) -> None:
        for task in (self._scaler, getattr(self, "_watcher", None), *self._proxies.values()):
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
        if getattr(self, "nc", None) is not None:
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
        if getattr(self, "nc", None) is not None:
            await self.nc.close()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
