"""One resolved view per vertex: what the spec decides for it once defaults, overrides and the
graph are applied (position, limits, buffer settings, partitions, routes, replicas, connector), so
callers read it instead of re-deriving it from `(pipeline, vertex_name)`.

Stream, consumer and subject names are the ISB's (framework/isb): they are made from these values.
"""

from __future__ import annotations

from dataclasses import dataclass

from framework.spec.model import Edge, Pipeline, Vertex
from framework.spec.registry import ConnectorInfo
from framework.spec.settings import ResolvedBuffers, ResolvedLimits

# The side-input manager's object name is `<pipeline>-sideinputs-manager`; no vertex may take it.
MANAGER_SUFFIX = "sideinputs-manager"


def min_replicas(v: Vertex) -> int:
    """The fewest replicas a vertex runs with when scaled: sources always run; a sink keeps one
    (its outage shows, its connection stays warm) unless the spec asks for `scale.min: 0`; UDFs
    scale to zero by default."""
    if v.kind == "source" or (v.kind == "sink" and "min" not in v.scale.model_fields_set):
        return max(1, v.scale.min)
    return v.scale.min


def upstream_scaled(v: Vertex) -> bool:
    """A source scaled on its upstream's own backlog (its connector has a KEDA trigger) because it
    may run more than one replica; other sources run a fixed number."""
    return v.source is not None and v.source.connector.keda_trigger is not None and v.scale.max > 1


@dataclass(frozen=True)
class VertexPlan:
    """A vertex as the spec resolves it."""

    vertex: Vertex
    index: int  # position in spec.vertices
    limits: ResolvedLimits
    buffers: ResolvedBuffers
    partitions: list[int | None]
    in_edges: list[Edge]
    out_edges: list[Edge]  # its routes, in spec order
    min_replicas: int
    connector: ConnectorInfo | None  # a source's or sink's

    @property
    def name(self) -> str:
        return self.vertex.name

    @property
    def path(self) -> str:
        """`spec.vertices[i]`: where the vertex is in the file, for messages."""
        return f"spec.vertices[{self.index}]"


def plan(p: Pipeline, name: str) -> VertexPlan:
    """The resolved view of vertex `name` (KeyError naming the known vertices if there is none)."""
    v = p.vertex(name)
    block = v.source if v.source is not None else v.sink
    return VertexPlan(
        vertex=v, index=p.spec.vertices.index(v), limits=p.limits_for(name), buffers=p.buffers_for(name),
        partitions=p.partitions(name), in_edges=p.in_edges(name), out_edges=p.out_edges(name),
        min_replicas=min_replicas(v), connector=block.connector if block is not None else None)


def plans(p: Pipeline) -> list[VertexPlan]:
    """Every vertex's plan, in spec order."""
    return [plan(p, v.name) for v in p.spec.vertices]
