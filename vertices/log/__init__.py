"""`log`: a sink printing each message on the worker's stdout."""

from framework.spec.registry import ConnectorInfo
from framework.spec.types import Model


class LogConfig(Model):
    """No settings."""


SINK = ConnectorInfo(LogConfig, "vertices.log.sink:LogSink", rank=11)
