"""`numaflow`: a program written with a Numaflow SDK as a connector. As a source, a user-defined
source (the SDK's `Sourcer`: read, ack, pending, partitions). The program runs unmodified;
natsflow plays Numaflow's data plane (framework/numaflow/, docs/numaflow-udfs.md)."""

from framework.spec.registry import ConnectorInfo
from vertices.numaflow.config import NumaflowSourceConfig

SOURCE = ConnectorInfo(NumaflowSourceConfig, "vertices.numaflow.source:NumaflowSource", install="natsflow[numaflow]",
                       requires=("grpc", "pynumaflow"), rank=9)
