"""Which kind object serves a vertex (source, reduce, or a forward loop around a map, batch map,
map stream or sink processor): one choice, shared by a vertex's own process (runtime/worker.py)
and the vertices of a fused chain (runtime/fused.py)."""

from __future__ import annotations

from framework.runtime.batch_map import BatchMapProcessor
from framework.runtime.forward import ForwardLoop, ProcessorFactory
from framework.runtime.lifecycle import VertexIO, VertexKind, VertexRuntime
from framework.runtime.map import MapProcessor
from framework.runtime.map_stream import MapStreamProcessor
from framework.runtime.reduce import ReduceKind
from framework.runtime.sink import SinkProcessor
from framework.runtime.source import SourceKind
from framework.spec import Vertex


def processor_for(v: Vertex) -> ProcessorFactory:
    """How a vertex that reads batches (not a source, not a reduce) opens its processor."""
    if v.udf is not None and v.udf.kind == "numaflow":
        # Imported here: grpc and the SDK's protos are the optional extra natsflow[numaflow].
        from framework.numaflow.map_vertex import open_numaflow_map

        return open_numaflow_map
    if v.kind == "sink":
        return SinkProcessor.open
    if v.udf is not None and v.udf.kind == "mapStream":
        return MapStreamProcessor.open
    if v.udf is not None and v.udf.batch_map is not None:
        return BatchMapProcessor.open
    return MapProcessor.open


def kind_for(rt: VertexRuntime, io: VertexIO) -> VertexKind:
    """The kind object that serves this vertex."""
    v = rt.v
    if v.kind == "source":
        return SourceKind(rt, io)
    if v.udf is not None and v.udf.windowing is not None:
        return ReduceKind(rt, io)  # a Python reduce, or a Numaflow reducer over natsflow's windows
    return ForwardLoop(rt, io, processor_for(v))
