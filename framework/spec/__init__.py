"""The pipeline spec: models of the YAML file, graph rules, the resolved view of each vertex, and
loading with error texts that name the file, the field path and the reason.

Modules: `types` (numbers, durations, names, credentials, the base model), `settings` (limits,
buffers, scaling, retries, watermarks, side inputs), `udf`, `model` (pipeline, vertices, edges;
source and sink blocks from the connector `registry`), `graph` (rules across the model),
`handlers` (user code), `plan` (one resolved view per vertex), `load`; beside them `envsubst`,
`secrets`, `names` and `yaml_file`.
"""

from framework.spec.handlers import HandlerError, load_handler
from framework.spec.load import SpecError, load_pipeline, parse_pipeline
from framework.spec.model import Edge, OnFull, Pipeline, Sink, Source, Vertex
from framework.spec.plan import VertexPlan, min_replicas, plan, plans
from framework.spec.registry import ConnectorInfo, sinks, sources
from framework.spec.settings import (
    DEFAULT_BUFFERS,
    DEFAULT_LIMITS,
    Backoff,
    OnFailure,
    ResolvedBuffers,
    ResolvedLimits,
    Resources,
    Retry,
    Scale,
)
from framework.spec.sideinput import SideInput
from framework.spec.types import Handler, Model, Secret, SecretRef, format_seconds, parse_duration
from framework.spec.udf import Udf, WindowSpec

__all__ = [
    "DEFAULT_BUFFERS", "DEFAULT_LIMITS", "Backoff", "ConnectorInfo", "Edge", "Handler", "HandlerError", "Model",
    "OnFailure", "OnFull", "Pipeline", "ResolvedBuffers", "ResolvedLimits", "Resources", "Retry", "Scale", "Secret",
    "SecretRef", "SideInput", "Sink", "Source", "SpecError", "Udf", "Vertex", "VertexPlan", "WindowSpec",
    "format_seconds", "load_handler", "load_pipeline", "min_replicas", "parse_duration", "parse_pipeline",
    "plan", "plans", "sinks", "sources",
]
