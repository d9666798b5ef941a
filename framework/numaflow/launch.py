"""The ProgramLaunch of a vertex's Numaflow program from the pipeline spec (shared by every kind:
map, sink, transformer, reduce, side input, source)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from framework.numaflow.program import ProgramLaunch
from framework.runtime.udf import VertexFailure
from framework.spec.model import Pipeline
from framework.spec.programs import container_only
from framework.spec.secrets import resolve, vertex_path
from framework.spec.udf import NumaflowProgram

# Rendered pods: the vertex container sees every sidecar's socket folder under this root
# (framework/k8s/numaflow.py mounts one emptyDir, each sidecar its own subPath at /var/run/numaflow).
SIDECARS_ENV = "NATSFLOW_NUMAFLOW_SIDECARS"


def program_key(spec: NumaflowProgram) -> str:
    """The folder name of a program's sockets in a rendered pod: the same for the renderer and
    the worker, and different for the programs of one vertex (udf, sink, fallback, transformer)."""
    image = spec.container.image if spec.container is not None else ""
    raw = json.dumps([image, spec.container.command if spec.container else None,
                      spec.container.args if spec.container else None, spec.command], sort_keys=True)
    return "nf-" + hashlib.sha1(raw.encode()).hexdigest()[:12]


class NotRunnableHere(VertexFailure):
    """The program has only a `container` (for `natsflow render`), no `command` to run locally."""


def launch_for(p: Pipeline, vertex: str, spec: NumaflowProgram, where: str, base_dir: Path | None,
               container_type: str | None = None) -> ProgramLaunch:
    """`where`: the spec block's path below the vertex (e.g. "udf.numaflow", "sink.numaflow"), for
    error texts. The program runs in the pipeline file's folder, like a natsflow handler's imports."""
    path = f"{vertex_path(p, p.vertex(vertex))}.{where}"
    if not spec.command and not os.environ.get(SIDECARS_ENV):
        raise NotRunnableHere(f"{path}.command: {container_only(vertex, where)}")
    env = {k: resolve(v, f"{path}.env.{k}") for k, v in spec.env.items()}
    return launch_of(spec, env, base_dir, p.name, vertex, container_type)


def launch_of(spec: NumaflowProgram, env: dict[str, str], cwd: Path | None, pipeline: str, vertex: str,
              container_type: str | None = None) -> ProgramLaunch:
    """The launch of `spec` with its `env` resolved; in a rendered pod, the sidecar's folder."""
    sidecars = os.environ.get(SIDECARS_ENV)
    return ProgramLaunch(command=list(spec.command or []), env=env, cwd=cwd, startup_timeout=spec.startup_timeout,
                         pipeline=pipeline, vertex=vertex,
                         replica=int(os.environ.get("NATSFLOW_REPLICA_INDEX", "0")), container_type=container_type,
                         sidecar_folder=Path(sidecars) / program_key(spec) if sidecars else None)
