"""natsflow: stream pipelines on NATS JetStream, one small service per step."""

from framework.sdk import DROP, Datum, Message, Window
from framework.sideinputs.manager import SideInputError, side_input, side_input_json
from framework.spec import Pipeline, SpecError, load_pipeline
from framework.transport.settings import NatsSettings

__all__ = ["DROP", "Datum", "Message", "NatsSettings", "Pipeline", "SideInputError", "SpecError", "Window",
           "load_pipeline", "side_input", "side_input_json"]
__version__ = "0.1.0"
