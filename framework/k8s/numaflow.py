"""Numaflow SDK programs of a rendered vertex: each a sidecar container of the vertex pod, as in
Numaflow. One emptyDir holds their sockets: each sidecar mounts its own subPath of it at
/var/run/numaflow (where the SDKs write), the vertex container mounts all of it and finds each
program's folder by `program_key` (framework/numaflow/launch.py)."""

from __future__ import annotations

from typing import Any

from framework.k8s.objects import resources, secret_env
from framework.numaflow.launch import SIDECARS_ENV, program_key
from framework.spec import Pipeline, SecretRef, Vertex
from framework.spec.programs import numaflow_programs
from framework.spec.udf import NumaflowProgram

SOCKETS_VOLUME = "numaflow-sockets"
SDK_FOLDER = "/var/run/numaflow"  # where every Numaflow SDK binds its socket and server-info file
SDK_SIDE_INPUTS = "/var/numaflow/side-inputs"  # where a Numaflow UDF reads side input <name>
VERTEX_FOLDER = "/var/run/natsflow-numaflow"


def sidecar(p: Pipeline, owner: str, name: str, spec: NumaflowProgram, container_type: str | None,
            image: str, side_inputs: bool = False) -> dict[str, Any]:
    """The program's container: its own image (`container`), else its `command` in the pipeline
    image. `owner`: the vertex (or side input) it serves; `side_inputs`: the vertex reads some."""
    env = [{"name": "NUMAFLOW_PIPELINE_NAME", "value": p.name}, {"name": "NUMAFLOW_VERTEX_NAME", "value": owner}]
    if container_type:
        env.append({"name": "NUMAFLOW_UD_CONTAINER_TYPE", "value": container_type})
    for k, val in sorted(spec.env.items()):
        env.append(secret_env(k, val) if isinstance(val, SecretRef) else {"name": k, "value": val})
    c: dict[str, Any] = {"name": name, "image": spec.container.image if spec.container else image, "env": env,
                         "resources": resources("numaflow-udf"),
                         "volumeMounts": [{"name": SOCKETS_VOLUME, "mountPath": SDK_FOLDER,
                                           "subPath": program_key(spec)}]}
    if side_inputs:  # the vertex writes their values there (framework/sideinputs/files.py)
        c["volumeMounts"].append({"name": SOCKETS_VOLUME, "mountPath": SDK_SIDE_INPUTS,
                                  "subPath": f"{program_key(spec)}/side-inputs"})
    if spec.container is not None:
        if spec.container.command:
            c["command"] = list(spec.container.command)
        if spec.container.args:
            c["args"] = list(spec.container.args)
    else:
        c["command"] = list(spec.command or [])
    return c


def numaflow_pod_parts(p: Pipeline, v: Vertex, image: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sidecars, volumes) for the vertex pod; the vertex container gets `vertex_wiring`."""
    programs = numaflow_programs(v)
    if not programs:
        return [], []
    return ([sidecar(p, v.name, prog.name, prog.spec, prog.container_type, image, bool(v.side_inputs))
             for prog in programs],
            [{"name": SOCKETS_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}])


def side_input_pod_parts(p: Pipeline, image: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(sidecars, volumes) of the side-input manager's pod: one per `spec.sideInputs[i].numaflow`
    retriever, named `si-<side input>`; the manager container gets `vertex_wiring`."""
    programs = [(si.name, si.numaflow) for si in p.spec.side_inputs if si.numaflow is not None]
    if not programs:
        return [], []
    return ([sidecar(p, name, f"si-{name}", spec, None, image) for name, spec in programs],
            [{"name": SOCKETS_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}}])


def vertex_wiring(container: dict[str, Any]) -> None:
    """The vertex container sees every sidecar's folder and is told where (SIDECARS_ENV)."""
    container["env"] = [*container["env"], {"name": SIDECARS_ENV, "value": VERTEX_FOLDER}]
    container["volumeMounts"] = [*container.get("volumeMounts", []),
                                 {"name": SOCKETS_VOLUME, "mountPath": VERTEX_FOLDER}]
