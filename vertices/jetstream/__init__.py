"""`jetstream`: an existing JetStream stream, as a source (a durable consumer) and a sink."""

from __future__ import annotations

from framework.spec.names import RESERVED_STREAM_PREFIX
from framework.spec.registry import ConnectorInfo, Placement, Problem
from vertices.jetstream.config import JetStreamSinkConfig, JetStreamSourceConfig


def reserved_stream_problem(config: JetStreamSourceConfig, at: Placement) -> list[Problem]:
    """A jetstream source must not read natsflow's own streams (sinks: JetStreamSinkConfig)."""
    stream = config.stream
    if not stream.startswith(RESERVED_STREAM_PREFIX):
        return []
    if stream.startswith(f"{RESERVED_STREAM_PREFIX}{at.pipeline}_"):
        reason = "is one of this pipeline's own buffers or dead-letter streams: reading it back would loop"
    elif not stream.endswith(("_dlq", "_archive")):
        reason = ("is natsflow's name for a buffer, a work queue that its vertex consumes alone; of "
                  "another pipeline's streams a jetstream source can read its dead letters "
                  "(nf_<pipeline>_<vertex>_dlq) and source archives (nf_<pipeline>_<vertex>_archive)")
    else:
        return []
    return [(f"{at.path}.stream", f"{stream!r} {reason}")]


SOURCE = ConnectorInfo(JetStreamSourceConfig, "vertices.jetstream.source:JetStreamSource",
                       check=reserved_stream_problem, rank=4)
SINK = ConnectorInfo(JetStreamSinkConfig, "vertices.jetstream.sink:JetStreamSink", rank=14)
