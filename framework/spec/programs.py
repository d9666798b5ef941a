"""The Numaflow SDK programs a vertex runs (its map/reduce, source transformer, sink, fallback
sink): one list for `natsflow run`'s checks and `natsflow render`'s sidecars."""

from __future__ import annotations

from dataclasses import dataclass

from framework.spec.model import Vertex
from framework.spec.udf import NumaflowProgram

# What a fallback sink program is told to be, so that it binds the fallback socket names.
CONTAINER_FALLBACK_SINK = "fb-udsink"


@dataclass(frozen=True)
class VertexProgram:
    name: str  # the rendered sidecar's container name
    where: str  # the block's path below the vertex, for error texts
    spec: NumaflowProgram
    container_type: str | None = None  # NUMAFLOW_UD_CONTAINER_TYPE


def numaflow_programs(v: Vertex) -> list[VertexProgram]:
    out: list[VertexProgram] = []
    if v.udf is not None and v.udf.numaflow is not None:
        out.append(VertexProgram("udf", "udf.numaflow", v.udf.numaflow))
    if v.source is not None and v.source.kind == "numaflow" and isinstance(v.source.config, NumaflowProgram):
        out.append(VertexProgram("udsource", "source.numaflow", v.source.config))
    if v.source is not None and v.source.transformer is not None:
        out.append(VertexProgram("transformer", "source.transformer.numaflow", v.source.transformer.numaflow))
    if v.sink is not None:
        if v.sink.kind == "numaflow" and isinstance(v.sink.config, NumaflowProgram):
            out.append(VertexProgram("udsink", "sink.numaflow", v.sink.config))
        fb = v.sink.fallback
        if fb is not None and fb.kind == "numaflow" and isinstance(fb.config, NumaflowProgram):
            out.append(VertexProgram("fb-udsink", "sink.fallback.numaflow", fb.config, CONTAINER_FALLBACK_SINK))
    return out


def container_only(vertex: str, where: str) -> str:
    return (f"vertex {vertex!r} has only {where}.container, which runs when rendered for Kubernetes; "
            f"add {where}.command to run it on this machine")


def not_runnable_here(v: Vertex) -> list[tuple[str, str]]:
    """(field below the vertex, why) for each program with only a `container`."""
    return [(f"{prog.where}.command", container_only(v.name, prog.where))
            for prog in numaflow_programs(v) if not prog.spec.command]
