"""What natsflow's registry reads: the `filetail` block of a spec and where its source is.
Only light imports here: the registry imports this module whenever natsflow loads a spec."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from framework.spec.registry import ConnectorInfo
from framework.spec.types import DAY, Duration, Model, within_seconds


class FileTailConfig(Model):
    path: str = Field(min_length=1, description="the file to follow; it may not exist yet")
    poll_interval: Annotated[Duration, within_seconds(0.01, DAY)] = Field(
        0.1, description="how often to look for new lines once at the end")


# Live: event time is the time a line is read, so the default idle rule applies.
SOURCE = ConnectorInfo(FileTailConfig, "natsflow_filetail.source:FileTailSource", live=True)
