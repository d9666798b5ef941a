"""`postgres`: a table, as a sink (one transaction per batch, insert or upsert)."""

from framework.spec.registry import ConnectorInfo
from vertices.postgres.config import PostgresSinkConfig

SINK = ConnectorInfo(PostgresSinkConfig, "vertices.postgres.sink:PostgresSink", install="natsflow[postgres]",
                     requires=("asyncpg",), rank=17)
