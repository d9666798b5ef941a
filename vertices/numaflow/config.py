"""The `numaflow` connector blocks: the SDK program (command/container/env/startupTimeout, as
`udf.numaflow`); for a sink where its on-success responses go, for a source how much one read asks for."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from framework.spec.types import MINUTE, Duration, WholeNumber, within, within_seconds
from framework.spec.udf import NumaflowProgram


class NumaflowSinkConfig(NumaflowProgram):
    """A Numaflow sink program. Its FALLBACK responses go to the vertex's `fallback:` sink (with
    Nf-Error), FAILURE ones are retried under `retryStrategy`; ON_SUCCESS ones are written to
    `onSuccess` (any sink kind, e.g. `{log: {}}`), or count as written when it is not set."""

    on_success: dict[str, Any] | None = Field(None, description="a sink block (one sink kind) for the "
                                              "program's ON_SUCCESS responses")

    @model_validator(mode="after")
    def _on_success_is_a_sink(self) -> NumaflowSinkConfig:
        if self.on_success is None:
            return self
        from framework.spec.registry import sinks  # the registry is complete only once loaded

        known = sinks()
        if len(self.on_success) != 1 or next(iter(self.on_success)) not in known:
            raise ValueError(f"onSuccess must set exactly one sink kind: {', '.join(known)} "
                             f"(found {', '.join(self.on_success) or 'none'})")
        kind, block = next(iter(self.on_success.items()))
        known[kind].config.model_validate(block or {})
        return self

    def on_success_sink(self) -> tuple[str, Any] | None:
        """(kind, validated config) of the on-success sink."""
        if self.on_success is None:
            return None
        from framework.spec.registry import sinks

        kind, block = next(iter(self.on_success.items()))
        return kind, sinks()[kind].config.model_validate(block or {})


class NumaflowSourceConfig(NumaflowProgram):
    """`source.numaflow`: a user-defined source (the SDK's `Sourcer`)."""

    read_batch_size: Annotated[WholeNumber, within(1, 100_000, "one read's records are stored, then acked, "
                                                                "together")] = Field(
        500, description="records one read asks the source for (Numaflow's limits.readBatchSize)")
    read_timeout: Annotated[Duration, within_seconds(0.001, MINUTE, "a read returns what it has by then")] = Field(
        1.0, description="how long one read may wait for records (timeout_in_ms of the SDK's read)")
