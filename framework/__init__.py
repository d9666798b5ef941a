"""natsflow: stream pipelines on NATS JetStream, one small service per step."""

from .connection import NatsSettings
from .sdk import DROP, Datum, Message, Window
from .spec import Pipeline, SpecError, load_pipeline

__all__ = ["DROP", "Datum", "Message", "NatsSettings", "Pipeline", "SpecError", "Window", "load_pipeline"]
__version__ = "0.1.0"
