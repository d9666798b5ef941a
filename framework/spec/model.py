"""The pipeline file's models: a pipeline, its vertices (each a source, a udf or a sink) and the
edges between them. The `source:` and `sink:` blocks take one connector each, from the connector
registry (framework/spec/registry.py): their keys are the registered kinds, in registry order.

Graph rules (what the models alone cannot see) are in graph.py, loading and error texts in load.py.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, Field, PrivateAttr, create_model, model_validator

from framework.spec.envsubst import EnvRef
from framework.spec.ordering import Ordering, ordered_partitions
from framework.spec.registry import ConnectorInfo, sinks, sources
from framework.spec.settings import (
    Archive,
    Buffers,
    Lifecycle,
    Limits,
    OnFailure,
    ResolvedBuffers,
    ResolvedLimits,
    Resources,
    RetryStrategy,
    Scale,
    WatermarkConfig,
)
from framework.spec.sideinput import SideInput
from framework.spec.types import CallTimeout, Flag, Handler, Model, Name, chosen, exactly_one_of
from framework.spec.udf import SourceTransformer, Udf


def _installed(info: ConnectorInfo) -> BeforeValidator:
    """A connector whose client library is missing fails at its key, naming the extra to install."""

    def check(value: Any) -> Any:
        problem = info.missing() if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    return BeforeValidator(check)


def _connector_fields(infos: dict[str, ConnectorInfo]) -> dict[str, Any]:
    return {kind: (Annotated[info.config | None, _installed(info)], None) for kind, info in infos.items()}


# ---- sources ---------------------------------------------------------------------------------


class ConnectorBlock(Model):
    """What a `source:` and a `sink:` block share: one registered connector key is set."""

    role: ClassVar[Literal["source", "sink"]]

    def kinds(self) -> dict[str, ConnectorInfo]:
        """The registered connectors of this block's role, by spec key."""
        return sources() if self.role == "source" else sinks()

    @property
    def kind(self) -> str:
        return chosen(self, fields=tuple(self.kinds()))

    @property
    def config(self) -> BaseModel:
        """The chosen connector's config."""
        config: BaseModel = dict(self)[self.kind]
        return config

    @property
    def connector(self) -> ConnectorInfo:
        return self.kinds()[self.kind]


class SourceBlock(ConnectorBlock):
    """A vertex's `source:`: exactly one registered source kind, and an optional eventTime handler."""

    role = "source"

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceBlock:
        exactly_one_of(self, self.role, fields=tuple(self.kinds()))
        return self



if TYPE_CHECKING:
    class Source(SourceBlock):
        """What a type checker sees: the connector keys are known only once the registry is read."""

        event_time: Handler | None
        archive: Archive | None
        transformer: SourceTransformer | None

        def __getattr__(self, kind: str) -> Any: ...
else:
    Source = create_model("Source", __base__=SourceBlock, __module__=__name__, **_connector_fields(sources()),
                          event_time=(Handler | None, None), transformer=(SourceTransformer | None, None),
                          archive=(Archive | None, Field(None, description="keep what the source took in for "
                                                                           "`natsflow replay` (docs/replay.md)")))


# ---- sinks -----------------------------------------------------------------------------------


class SinkBlock(ConnectorBlock):
    """A vertex's `sink:` (or a fallback sink): exactly one registered sink kind, with its retries."""

    role = "sink"

    if TYPE_CHECKING:  # the fields `Sink` adds after the connector keys (field order is error order)
        retry_strategy: RetryStrategy
        timeout: float
        fallback: SinkBlock | None

    @model_validator(mode="after")
    def _exactly_one(self) -> SinkBlock:
        exactly_one_of(self, self.role, fields=tuple(self.kinds()))
        if self.retry_strategy.on_failure is OnFailure.fallback and self.fallback is None:
            raise ValueError("retryStrategy.onFailure is fallback, so a fallback sink is required")
        if self.fallback is not None and self.fallback.fallback is not None:
            raise ValueError("a fallback sink cannot have a fallback of its own")
        return self



if TYPE_CHECKING:
    class Sink(SinkBlock):
        """What a type checker sees: the connector keys are known only once the registry is read."""

        fallback: Sink | None

        def __getattr__(self, kind: str) -> Any: ...
else:
    Sink = create_model(
        "Sink", __base__=SinkBlock, __module__=__name__, **_connector_fields(sinks()),
        retry_strategy=(RetryStrategy, Field(default_factory=RetryStrategy)),
        timeout=(CallTimeout, Field(300.0, description="longest write call; longer is a failed write under "
                                    "retryStrategy")),
        fallback=("Sink | None", Field(None, description="where datums go that the sink gives up on (any sink "
                                                          "kind)")),
    )
    Sink.model_rebuild(_types_namespace={"Sink": Sink})


# ---- graph -----------------------------------------------------------------------------------


class Vertex(Model):
    name: Name
    source: Source | None = None
    udf: Udf | None = None
    sink: Sink | None = None
    scale: Scale = Field(default_factory=Scale)
    limits: Limits | None = None
    buffers: Buffers | None = Field(None, description="overrides spec.buffers for this vertex's buffer (none for a "
                                                       "source) and its dead-letter stream")
    resources: Resources | None = None
    output_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema of the payloads this vertex writes (documentation: `natsflow asyncapi`)")
    side_inputs: list[Name] = Field(default_factory=list,
                                    description="names from spec.sideInputs this vertex reads")

    @model_validator(mode="after")
    def _one_kind(self) -> Vertex:
        blocks = (("source", self.source), ("udf", self.udf), ("sink", self.sink))
        kinds = [k for k, block in blocks if block is not None]
        if len(kinds) != 1:
            found = ", ".join(kinds) if kinds else "none"
            raise ValueError(f"a vertex is exactly one of source, udf or sink (found: {found})")
        return self

    @property
    def kind(self) -> Literal["source", "udf", "sink"]:
        return "source" if self.source else "udf" if self.udf else "sink"


class TagOperator(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    or_ = "or"
    and_ = "and"
    not_ = "not"


class TagCondition(Model):
    operator: TagOperator = TagOperator.or_
    values: list[str] = Field(min_length=1)

    def matches(self, tags: frozenset[str]) -> bool:
        if self.operator is TagOperator.or_:
            return any(v in tags for v in self.values)
        if self.operator is TagOperator.and_:
            return all(v in tags for v in self.values)
        return not any(v in tags for v in self.values)


class Conditions(Model):
    tags: TagCondition | None = None


class OnFull(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    retry_until_success = "retryUntilSuccess"
    discard_latest = "discardLatest"


class Edge(Model):
    from_: Name  # `from` in the file (a Python keyword here)
    to: Name
    conditions: Conditions | None = None
    on_full: OnFull = OnFull.retry_until_success
    late: Flag = Field(False, description="from a reduce: this edge receives only late messages")
    fused: Flag = Field(False, description="run both ends in one process with no buffer between them "
                                           "(the same chains as spec.fuse)")

    def accepts(self, tags: frozenset[str]) -> bool:
        if self.conditions is None or self.conditions.tags is None:
            return True
        return self.conditions.tags.matches(tags)


class Metadata(Model):
    name: Name
    namespace: Name | None = None
    labels: dict[str, str] = Field(default_factory=dict)


MAX_VERTICES = 1000


class PipelineSpec(Model):
    limits: Limits = Field(default_factory=Limits)
    buffers: Buffers = Field(default_factory=Buffers)
    watermark: WatermarkConfig = Field(default_factory=WatermarkConfig)
    side_inputs: list[SideInput] = Field(default_factory=list, max_length=100)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    ordered: Flag = Field(False, description="keep per-key order end to end through maps and sinks "
                          "(partitioned buffers, one reader per partition: docs/ordering.md)")
    ordering: Ordering = Field(default_factory=Ordering)
    vertices: list[Vertex] = Field(min_length=2, max_length=MAX_VERTICES)
    edges: list[Edge] = Field(min_length=1, max_length=10 * MAX_VERTICES)
    fuse: list[Annotated[list[Name], Field(min_length=2)]] = Field(
        default_factory=list, max_length=MAX_VERTICES,
        description="chains of vertices, each run in one process with no buffer between its vertices")


class Pipeline(Model):
    api_version: Literal["natsflow.io/v1"]
    kind: Literal["Pipeline"]
    metadata: Metadata
    spec: PipelineSpec
    _env_refs: list[EnvRef] = PrivateAttr(default_factory=list)
    _chains: list[list[str]] | None = PrivateAttr(None)  # resolved once: status asks per vertex

    @property
    def env_refs(self) -> list[EnvRef]:
        """The `${VAR}` references of the file this pipeline was read from."""
        return self._env_refs

    # -- lookups used by the runtime --
    @property
    def name(self) -> str:
        return self.metadata.name

    def vertex(self, name: str) -> Vertex:
        for v in self.spec.vertices:
            if v.name == name:
                return v
        known = ", ".join(v.name for v in self.spec.vertices)
        raise KeyError(f"pipeline {self.name!r} has no vertex {name!r} (vertices: {known})")

    def out_edges(self, name: str) -> list[Edge]:
        return [e for e in self.spec.edges if e.from_ == name]

    def in_edges(self, name: str) -> list[Edge]:
        return [e for e in self.spec.edges if e.to == name]

    def limits_for(self, name: str) -> ResolvedLimits:
        return self.spec.limits.merged(self.vertex(name).limits)

    def buffers_for(self, name: str | None) -> ResolvedBuffers:
        """The one place buffer settings are resolved: a vertex's `buffers` over the pipeline's
        (for its buffer streams and dead-letter stream); `None` gives the pipeline-wide settings
        (KV buckets)."""
        return self.spec.buffers.merged(self.vertex(name).buffers if name is not None else None)

    def buffers_field(self, name: str | None, field: str) -> str:
        """The spec path that set `field` (e.g. `replicas`) of `buffers_for(name)`, for errors."""
        for i, v in enumerate(self.spec.vertices):
            if v.name == name and v.buffers is not None and getattr(v.buffers, _snake(field)) is not None:
                return f"spec.vertices[{i}].buffers.{field}"
        return f"spec.buffers.{field}"

    def partition_count(self, name: str) -> int:
        """How many partitions the buffer of vertex `name` has: a reduce's own, every map's and
        sink's in ordered mode, else 1."""
        v = self.vertex(name)
        if v.udf is not None and v.udf.windowing is not None:
            return v.udf.windowing.partitions
        return ordered_partitions(self, v) if self.spec.ordered else 1

    def partitions(self, name: str) -> list[int | None]:
        """Partition indexes of vertex `name`'s buffer: [None] unless it has more than one."""
        n = self.partition_count(name)
        return [None] if n == 1 else list(range(n))

    def reading_vertices(self) -> list[Vertex]:
        """Vertices that read an inter-step buffer when each runs on its own (every UDF and sink)."""
        return [v for v in self.spec.vertices if v.kind != "source"]

    def buffered_vertices(self) -> list[Vertex]:
        """Vertices that own an inter-step buffer: the reading ones, less those fused behind
        another vertex of their chain (framework/spec/fuse.py)."""
        inner = {name for chain in self.chains() for name in chain[1:]}
        return [v for v in self.reading_vertices() if v.name not in inner]

    def chains(self) -> list[list[str]]:
        """The fused chains, head first, from `spec.fuse` and `edges[].fused` (a valid pipeline)."""
        if self._chains is None:
            self._chains = fused_chains(self)
        return self._chains

    def chain_of(self, name: str) -> list[str] | None:
        """The fused chain holding vertex `name`, if any."""
        return next((c for c in self.chains() if name in c), None)

    def process_names(self) -> list[str]:
        """The vertices that run as processes: all but those fused behind their chain's head."""
        inner = {name for chain in self.chains() for name in chain[1:]}
        return [v.name for v in self.spec.vertices if v.name not in inner]


def fused_chains(p: Pipeline) -> list[list[str]]:
    """`spec.fuse` chains, then `edges[].fused` joined into chains (an edge touching a listed
    chain extends it). Graph rules (framework/spec/fuse.py) check the result."""
    chains = [list(c) for c in p.spec.fuse]
    for e in p.spec.edges:
        if not e.fused:
            continue
        tail = next((c for c in chains if c[-1] == e.from_), None)
        head = next((c for c in chains if c[0] == e.to), None)
        if tail is not None and head is not None and tail is not head:
            tail.extend(head)
            chains.remove(head)
        elif tail is not None:
            if e.to not in tail:
                tail.append(e.to)
        elif head is not None:
            head.insert(0, e.from_)
        elif not any(e.from_ in c and e.to in c for c in chains):
            chains.append([e.from_, e.to])
    return chains


def _snake(alias: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), alias)
