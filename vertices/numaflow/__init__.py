"""`numaflow`: a sink written with a Numaflow SDK (`Sinker`, pynumaflow's SinkAsyncServer or
numaflow-go's sinker), run as the vertex's sink (docs/numaflow-udfs.md). Needs natsflow[numaflow]."""

from framework.spec.registry import ConnectorInfo
from vertices.numaflow.config import NumaflowSinkConfig

SINK = ConnectorInfo(NumaflowSinkConfig, "vertices.numaflow.sink:NumaflowSinkConnector",
                     install="natsflow[numaflow]", requires=("grpc", "pynumaflow"), rank=21)
