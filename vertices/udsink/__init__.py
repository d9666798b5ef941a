"""`udsink`: a user's Python function is the sink; its block is the handler reference."""

from framework.spec.registry import ConnectorInfo
from framework.spec.types import Handler

SINK = ConnectorInfo(Handler, "vertices.udsink.sink:UserSink", rank=15)
