"""`numaflow`: a program written with a Numaflow SDK as a connector, run unmodified with natsflow
as its data plane (docs/numaflow-udfs.md). Needs natsflow[numaflow].

As a source: a user-defined source (`Sourcer`: read, ack, pending, partitions). As a sink: a
`Sinker` (pynumaflow's SinkAsyncServer or numaflow-go's sinker)."""

from framework.spec.registry import ConnectorInfo
from vertices.numaflow.config import NumaflowSinkConfig, NumaflowSourceConfig

SOURCE = ConnectorInfo(NumaflowSourceConfig, "vertices.numaflow.source:NumaflowSource", install="natsflow[numaflow]",
                       requires=("grpc", "pynumaflow"), rank=10)
SINK = ConnectorInfo(NumaflowSinkConfig, "vertices.numaflow.sink:NumaflowSinkConnector",
                     install="natsflow[numaflow]", requires=("grpc", "pynumaflow"), rank=21)
