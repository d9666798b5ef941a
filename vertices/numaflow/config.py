"""The `numaflow` connector blocks: the program (`command`, `container`, `env`, `startupTimeout`,
as for `udf.numaflow`) and, for a source, how much one read asks for."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from framework.spec.types import MINUTE, Duration, WholeNumber, within, within_seconds
from framework.spec.udf import NumaflowProgram


class NumaflowSourceConfig(NumaflowProgram):
    """`source.numaflow`: a user-defined source (the SDK's `Sourcer`)."""

    read_batch_size: Annotated[WholeNumber, within(1, 100_000, "one read's records are stored, then acked, "
                                                                "together")] = Field(
        500, description="records one read asks the source for (Numaflow's limits.readBatchSize)")
    read_timeout: Annotated[Duration, within_seconds(0.001, MINUTE, "a read returns what it has by then")] = Field(
        1.0, description="how long one read may wait for records (timeout_in_ms of the SDK's read)")
