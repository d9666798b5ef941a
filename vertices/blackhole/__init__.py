"""`blackhole`: a sink that acknowledges and discards."""

from framework.spec.registry import ConnectorInfo
from framework.spec.types import Model


class BlackholeConfig(Model):
    """No settings."""


SINK = ConnectorInfo(BlackholeConfig, "vertices.blackhole.sink:BlackholeSink", rank=12)
