"""One vertex as one process: pick the kind of the vertex (source, map, batch map, map stream,
sink, reduce) and run it under the shared lifecycle (runtime/lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

from framework.connector import ConnectorConfigError, connector_field_path
from framework.runtime.batch_map import BatchMapProcessor
from framework.runtime.forward import ForwardLoop, ProcessorFactory
from framework.runtime.lifecycle import VertexIO, VertexKind, VertexRuntime
from framework.runtime.map import MapProcessor
from framework.runtime.map_stream import MapStreamProcessor
from framework.runtime.reduce import ReduceKind
from framework.runtime.sink import SinkProcessor
from framework.runtime.source import SourceKind
from framework.runtime.udf import VertexFailure
from framework.spec import Pipeline, SpecError, load_pipeline
from framework.spec.secrets import check_vertex
from framework.transport.settings import NatsSettings


def kind_for(rt: VertexRuntime, io: VertexIO) -> VertexKind:
    """The kind object that serves this vertex."""
    v = rt.v
    if v.kind == "source":
        return SourceKind(rt, io)
    if v.udf is not None and v.udf.kind == "reduce":
        return ReduceKind(rt, io)
    if v.udf is not None and v.udf.numaflow is not None and v.udf.numaflow.reduce is not None:
        return ReduceKind(rt, io)  # a Numaflow reducer or reduce streamer over natsflow's windows
    open_processor: ProcessorFactory
    if v.udf is not None and v.udf.kind == "numaflow":
        # Imported here: grpc and the SDK's protos are the optional extra natsflow[numaflow].
        from framework.numaflow.map_vertex import open_numaflow_map

        open_processor = open_numaflow_map
    elif v.kind == "sink":
        open_processor = SinkProcessor.open
    elif v.udf is not None and v.udf.kind == "mapStream":
        open_processor = MapStreamProcessor.open
    elif v.udf is not None and v.udf.batch_map is not None:
        open_processor = BatchMapProcessor.open
    else:
        open_processor = MapProcessor.open
    return ForwardLoop(rt, io, open_processor)


def worker_for(p: Pipeline, vertex: str, settings: NatsSettings, base_dir: Path | None) -> VertexRuntime:
    """The process of one vertex, not yet running."""
    return VertexRuntime(p, vertex, settings, base_dir, kind_for)


async def run_vertex(pipeline_file: str | Path, vertex: str, settings: NatsSettings) -> None:
    """Run one vertex of the pipeline file until it is stopped (`natsflow vertex`)."""
    path = Path(pipeline_file)
    p = load_pipeline(path, check_handlers=False)
    check_vertex(p, p.vertex(vertex), str(path))  # a missing secret: one clear line, before connecting
    worker = worker_for(p, vertex, settings, path.parent)
    udf = p.vertex(vertex).udf
    if udf is not None and udf.kind == "command":
        raise SystemExit(f"vertex {vertex!r} runs its own command; start it with `natsflow run`")
    try:
        await worker.run()
    except ConnectorConfigError as exc:  # e.g. an HTTP body limit the server cannot carry
        raise SpecError(str(path), [(connector_field_path(p, vertex, exc.field), exc.reason)]) from None
    except VertexFailure as exc:  # e.g. its Numaflow program would not start: one clear message
        raise SystemExit(f"vertex {vertex}: {exc}") from None
    if worker.failure is not None:
        raise SystemExit(f"vertex {vertex}: {worker.failure}")
