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

from .buffer import provision
from .connection import NatsSettings
from .embedded import EmbeddedNats, free_port
from .protocol import vertex_descriptor
from .scaling import LagReader, desired_replicas
from .spec import Pipeline, load_pipeline

log = logging.getLogger("natsflow.supervisor")

RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)
HEALTHY_AFTER_S = 30.0


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

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name=f"vertex-{self.name}")

    async def _keep_running(self) -> None:
        failures = 0
        while not self._stopping:
            began = time.monotonic()
            self.proc = await asyncio.create_subprocess_exec(
                *self.cmd, env=self.env, cwd=self.cwd, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
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
        async for line in proc.stdout:
            self.out.write(prefix + line.decode(errors="replace"))
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


def vertex_command(p: Pipeline, pipeline_file: Path, vertex: str) -> tuple[list[str], dict[str, str]]:
    v = p.vertex(vertex)
    if v.udf is not None and v.udf.command:
        return list(v.udf.command), {"NATSFLOW_DESCRIPTOR": json.dumps(vertex_descriptor(p, vertex)), **v.udf.env}
    extra = dict(v.udf.env) if v.udf is not None else {}
    return [sys.executable, "-m", "framework.cli", "vertex", "--pipeline", str(pipeline_file),
            "--vertex", vertex], extra


class VertexGroup:
    """The replicas of one vertex; `scale_to` starts new ones or drains the newest (SIGTERM)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, out=None):
        self.name, self.cmd, self.env, self.cwd, self.out = name, cmd, env, cwd, out
        self.replicas: list[VertexProcess] = []

    def __len__(self) -> int:
        return len(self.replicas)

    async def scale_to(self, n: int, grace: float) -> None:
        while len(self.replicas) < n:
            i = len(self.replicas)
            env = {**self.env, "NATSFLOW_METRICS_PORT": str(free_port())}
            vp = VertexProcess(self.name if i == 0 else f"{self.name}#{i}", self.cmd, env, self.cwd, self.out)
            vp.start()
            self.replicas.append(vp)
        if len(self.replicas) > n:
            extra, self.replicas = self.replicas[n:], self.replicas[:n]
            await asyncio.gather(*(vp.stop(grace) for vp in extra))

    async def started(self) -> None:
        await asyncio.gather(*(vp.started.wait() for vp in self.replicas))


class Supervisor:
    """`natsflow run` (one replica per vertex) and `natsflow up` (autoscale=True: replicas follow
    each vertex's lag with the same rule KEDA applies, see framework/scaling.py)."""

    def __init__(self, pipeline_file: str | Path, settings: NatsSettings, data_dir: str | Path | None = None,
                 grace: float = 30.0, out=None, autoscale: bool = False):
        self.file = Path(pipeline_file).resolve()
        self.settings = settings
        self.data_dir = Path(data_dir) if data_dir else Path.cwd() / ".natsflow"
        self.grace = grace
        self.out = out
        self.autoscale = autoscale
        self.embedded: EmbeddedNats | None = None
        self.groups: dict[str, VertexGroup] = {}
        self.decisions: list[tuple[float, str, int, int, str]] = []  # (time, vertex, from, to, reason)
        self._scaler: asyncio.Task | None = None
        self._sources: set[str] = set()

    async def start(self) -> None:
        p = load_pipeline(self.file)
        self.pipeline = p
        self._sources = {v.name for v in p.spec.vertices if v.kind == "source"}
        if not self.settings.url:
            self.embedded = EmbeddedNats(self.data_dir / "nats" / p.name)
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.start)
            self.settings = self.settings.with_url(self.embedded.url)
            log.info("embedded nats-server with JetStream at %s (monitoring http://127.0.0.1:%d, data %s)",
                     self.embedded.url, self.embedded.monitor_port, self.embedded.store_dir)
        self.nc = await self.settings.connect(f"natsflow-{p.name}-supervisor")
        for what, result in await provision(self.nc.jetstream(), p):
            log.info("provision: %s %s", what, result)
        base_env = {**os.environ, **self.settings.to_env(), "PYTHONUNBUFFERED": "1"}
        # Sinks and UDFs first, so sources never write before their readers exist.
        for v in sorted(p.spec.vertices, key=lambda v: v.kind == "source"):
            cmd, extra = vertex_command(p, self.file, v.name)
            group = VertexGroup(v.name, cmd, {**base_env, **extra}, self.file.parent, self.out)
            self.groups[v.name] = group
            await group.scale_to(self.initial_replicas(v), self.grace)
        await asyncio.gather(*(g.started() for g in self.groups.values()))
        log.info("pipeline %s running: %s", p.name, ", ".join(f"{n} x{len(g)}" for n, g in self.groups.items()))
        if self.autoscale:
            self._scaler = asyncio.create_task(self._autoscale(p))

    def initial_replicas(self, v) -> int:
        if not self.autoscale or v.kind == "source":
            return max(1, v.scale.min) if self.autoscale else 1
        return v.scale.min

    async def _autoscale(self, p) -> None:
        """Every pollingInterval: lag -> desired replicas (KEDA's rule) -> start or drain processes."""
        reader = LagReader(self.nc.jetstream(), p)
        scaled = [v for v in p.spec.vertices if v.kind != "source"]
        last_active: dict[str, float] = {}
        next_poll = {v.name: 0.0 for v in scaled}
        tick = min(v.scale.polling_interval for v in scaled) if scaled else 1.0
        while True:
            now = time.monotonic()
            for v in scaled:
                if now < next_poll[v.name]:
                    continue
                next_poll[v.name] = now + v.scale.polling_interval
                try:
                    lag = await reader.lag(v.name)
                except Exception as exc:  # noqa: BLE001 - a missed poll only delays scaling
                    log.warning("autoscale: cannot read lag of %s: %s", v.name, exc)
                    continue
                group = self.groups[v.name]
                since = now - last_active[v.name] if v.name in last_active else None
                d = desired_replicas(lag, len(group), v.scale, since)
                if d.active:
                    last_active[v.name] = now
                if d.desired != len(group):
                    log.info("autoscale %s: %d -> %d replicas (%s)", v.name, len(group), d.desired, d.reason)
                    self.decisions.append((time.time(), v.name, len(group), d.desired, d.reason))
                    await group.scale_to(d.desired, self.grace)
            await asyncio.sleep(tick / 2)

    async def stop(self) -> None:
        if self._scaler is not None:
            self._scaler.cancel()
            await asyncio.gather(self._scaler, return_exceptions=True)
        # Sources first, so nothing new enters while the rest drains.
        sources = [g for g in self.groups.values() if g.name in self._sources]
        others = [g for g in self.groups.values() if g.name not in self._sources]
        await asyncio.gather(*(g.scale_to(0, self.grace) for g in sources))
        await asyncio.gather(*(g.scale_to(0, self.grace) for g in others))
        if getattr(self, "nc", None) is not None:
            await self.nc.close()
        if self.embedded is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.embedded.stop)
        log.info("pipeline stopped")

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("stopping pipeline")
            await self.stop()
