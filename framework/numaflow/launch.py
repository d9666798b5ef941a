"""The ProgramLaunch of a vertex's Numaflow program from the pipeline spec (shared by every kind:
map, sink, transformer, reduce, side input, source)."""

from __future__ import annotations

import os
from pathlib import Path

from framework.numaflow.program import ProgramLaunch
from framework.spec.model import Pipeline
from framework.spec.secrets import resolve, vertex_path
from framework.spec.udf import NumaflowProgram


class NotRunnableHere(ValueError):
    """The program has only a `container` (for `natsflow render`), no `command` to run locally."""


def launch_for(p: Pipeline, vertex: str, spec: NumaflowProgram, where: str, base_dir: Path | None,
               container_type: str | None = None) -> ProgramLaunch:
    """`where`: the spec block's path below the vertex (e.g. "udf.numaflow", "sink.numaflow"), for
    error texts. The program runs in the pipeline file's folder, like a natsflow handler's imports."""
    path = f"{vertex_path(p, p.vertex(vertex))}.{where}"
    if not spec.command:
        raise NotRunnableHere(f"{path}.command: vertex {vertex!r} has only {where}.container, which runs when "
                              f"rendered for Kubernetes; add {where}.command to run it on this machine")
    env = {k: resolve(v, f"{path}.env.{k}") for k, v in spec.env.items()}
    return ProgramLaunch(command=list(spec.command), env=env, cwd=base_dir, startup_timeout=spec.startup_timeout,
                         pipeline=p.name, vertex=vertex, replica=int(os.environ.get("NATSFLOW_REPLICA_INDEX", "0")),
                         container_type=container_type)
