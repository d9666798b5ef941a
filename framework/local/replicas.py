"""The processes `natsflow run` keeps alive: one replica of a vertex (restarted with backoff when
it dies, its output prefixed with its name) and the replicas of one vertex (scaled, rolled)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from framework.isb.descriptor import vertex_descriptor
from framework.local import process
from framework.local.embedded import free_port
from framework.spec import Pipeline, SpecError
from framework.spec.programs import not_runnable_here
from framework.spec.secrets import udf_env

log = logging.getLogger("natsflow.supervisor")

RESTART_BACKOFF = (0.5, 1, 2, 5, 10, 30)
HEALTHY_AFTER_S = 30.0
LINE_LIMIT = 1 << 20
READY_POLL_S = 0.2


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
    missing = not_runnable_here(v)
    if missing:
        index = [x.name for x in p.spec.vertices].index(vertex)
        raise SpecError(str(pipeline_file), [(f"spec.vertices[{index}].{field}", why) for field, why in missing])
    extra = udf_env(p, v)
    return [sys.executable, "-m", "framework.cli", "vertex", str(pipeline_file), "--vertex", vertex], extra


def readyz(port: int) -> bool:
    """The worker's /readyz answers 200 (connected, buffers there, handler loaded, side inputs in)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):  # not listening yet, or 503
        return False


class VertexProcess:
    """One replica of one vertex: starts it, prefixes its output, restarts it with backoff.

    Readiness: a natsflow worker serves /readyz on its NATSFLOW_METRICS_PORT; a program vertex
    (Go, Node: `udf.command`) serves no HTTP, so for it the line it logs once it reads
    (`<vertex> (<sdk>) started`) is the signal."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, out: TextIO | None = None,
                 program: bool = False):
        self.name = name
        self.cmd = cmd
        self.env = env
        self.cwd = cwd
        self.out = out or sys.stdout
        self.program = program
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._stopping = False
        self._task: asyncio.Task | None = None
        self.started = asyncio.Event()
        self._logged_ready = asyncio.Event()  # a program vertex logged that it is serving
        self._ready_mark = f" {name.split('#')[0]} ("

    def start(self) -> None:
        self._task = asyncio.create_task(self._keep_running(), name=f"vertex-{self.name}")

    async def wait_ready(self, timeout: float) -> bool:
        """True once the replica (any incarnation of it) is ready; False after `timeout` s."""
        if self.program:
            try:
                await asyncio.wait_for(self._logged_ready.wait(), timeout)
                return True
            except TimeoutError:
                return False
        port = int(self.env["NATSFLOW_METRICS_PORT"])

        async def check() -> bool:
            return self.proc is not None and await asyncio.to_thread(readyz, port)

        return await process.await_ready(check, timeout, interval=READY_POLL_S)

    async def _keep_running(self) -> None:
        failures = 0
        while not self._stopping:
            began = time.monotonic()
            self.proc = await process.spawn(self.cmd, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.PIPE,
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
            if self.program and not self._logged_ready.is_set() and self._ready_mark in text and ") started" in text:
                self._logged_ready.set()
            self.out.write(prefix + text)
            self.out.flush()

    async def stop(self, grace: float) -> None:
        self._stopping = True
        proc = self.proc
        if process.running(proc):
            assert proc is not None
            if await process.aterminate(proc, grace) is None:
                log.warning("vertex %s did not stop within %.0fs; killed it", self.name, grace)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def kill(self) -> None:
        """SIGKILL the current process (fault tests); the supervisor restarts it."""
        if self.proc is not None:
            process.kill(self.proc)


class VertexGroup:
    """The replicas of one vertex; `scale_to` starts new ones or drains the newest (SIGTERM),
    `roll` replaces each replica by a new process, one at a time, new first."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path, out: TextIO | None = None,
                 program: bool = False):
        self.name, self.cmd, self.env, self.cwd, self.out, self.program = name, cmd, env, cwd, out, program
        self.replicas: list[VertexProcess] = []
        self._lock = asyncio.Lock()
        self._spawned = 0
        self.removed = False  # set when the vertex left the pipeline: never start it again

    def __len__(self) -> int:
        return len(self.replicas)

    def _spawn(self) -> VertexProcess:
        label = self.name if self._spawned == 0 else f"{self.name}#{self._spawned}"
        self._spawned += 1
        vp = VertexProcess(label, self.cmd, {**self.env, "NATSFLOW_METRICS_PORT": str(free_port())}, self.cwd,
                           self.out, self.program)
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
        """Start a replacement, wait until it is ready, then drain one old replica; repeat. (A
        reduce too: partition leases keep two replicas from reading one partition.)"""
        async with self._lock:
            for i, old in enumerate(list(self.replicas)):
                new = self._spawn()
                if not await new.wait_ready(ready_timeout):
                    log.error("rolling %s: the new replica did not become ready in %.0fs; keeping the old one",
                              self.name, ready_timeout)
                    await new.stop(grace)
                    return
                self.replicas[i] = new
                await old.stop(grace)
                log.info("rolling %s: replica %d of %d replaced", self.name, i + 1, len(self.replicas))

    async def started(self) -> None:
        await asyncio.gather(*(vp.started.wait() for vp in self.replicas))


def is_program(p: Pipeline, vertex: str) -> bool:
    """A vertex run by its own program (`udf.command`), not by a natsflow worker."""
    udf = p.vertex(vertex).udf
    return udf is not None and udf.is_program
