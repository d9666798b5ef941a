"""`nats`: core NATS subjects, as a source (a subscription) and a sink (publishes)."""

from framework.spec.registry import ConnectorInfo
from vertices.nats.config import NatsSinkConfig, NatsSourceConfig

SOURCE = ConnectorInfo(NatsSourceConfig, "vertices.nats.source:NatsSource", live=True, rank=3)
SINK = ConnectorInfo(NatsSinkConfig, "vertices.nats.sink:NatsSink", rank=13)
