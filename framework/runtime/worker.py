"""One vertex as one process: pick the kind of the vertex (source, map, batch map, map stream,
sink, reduce) and run it under the shared lifecycle (runtime/lifecycle.py)."""

from __future__ import annotations

from pathlib import Path

from framework.connector import ConnectorConfigError, connector_field_path
from framework.runtime.fused import ChainRuntime
from framework.runtime.kinds import kind_for
from framework.runtime.lifecycle import VertexRuntime
from framework.runtime.udf import VertexFailure
from framework.spec import Pipeline, SpecError, load_pipeline
from framework.spec.secrets import check_vertex
from framework.transport.settings import NatsSettings

__all__ = ["kind_for", "run_vertex", "worker_for"]


def worker_for(p: Pipeline, vertex: str, settings: NatsSettings, base_dir: Path | None) -> VertexRuntime:
    """The process of one vertex, not yet running: of its whole chain when it heads a fused one."""
    chain = p.chain_of(vertex)
    if chain is not None:
        if chain[0] != vertex:
            raise SystemExit(f"vertex {vertex!r} is fused behind {chain[0]!r} (chain {' > '.join(chain)}): it runs "
                             f"in the process of {chain[0]!r}; start that one")
        return ChainRuntime(p, chain, settings, base_dir)
    return VertexRuntime(p, vertex, settings, base_dir, kind_for)


async def run_vertex(pipeline_file: str | Path, vertex: str, settings: NatsSettings) -> None:
    """Run one vertex of the pipeline file until it is stopped (`natsflow vertex`)."""
    path = Path(pipeline_file)
    p = load_pipeline(path, check_handlers=False)
    for name in p.chain_of(vertex) or [vertex]:  # a missing secret: one clear line, before connecting
        check_vertex(p, p.vertex(name), str(path))
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
