"""`spec.sideInputs[]`: a value computed on a schedule, by a Python `handler` or by a program
written with a Numaflow SDK (`numaflow:`, its `SideInput` retriever), stored in KV and read live by
the vertices that list it (framework/sideinputs/)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from framework.spec.types import DAY, WEEK, Duration, Model, Name, format_seconds, handler_shape, within_seconds
from framework.spec.udf import NumaflowProgram


class SideInputTrigger(Model):
    schedule: str = Field(description="@every <duration>, @hourly/@daily/..., or a 5-field cron (UTC)")
    timeout: Annotated[Duration, within_seconds(0.001, DAY)] = Field(
        60.0, description="a run taking longer counts as failed; the old value stays")

    @field_validator("schedule")
    @classmethod
    def _parses(cls, value: str) -> str:
        from framework.sideinputs.schedule import parse_schedule

        schedule = parse_schedule(value)
        seconds = getattr(schedule, "seconds", None)  # @every
        if seconds is not None and not 0.1 <= seconds <= WEEK:
            raise ValueError(f"@every must be from 100ms to {format_seconds(WEEK)} (for rarer runs use a cron "
                             "expression such as @monthly)")
        return value


class SideInput(Model):
    """A value computed by `handler()` (or the Numaflow program's retriever) on `trigger`."""

    name: Name
    trigger: SideInputTrigger
    handler: Annotated[str, AfterValidator(handler_shape)] | None = None
    numaflow: NumaflowProgram | None = Field(None, description="a Numaflow SDK SideInput retriever program; "
                                             "a response with no_broadcast keeps the previous value")

    @model_validator(mode="after")
    def _one_source(self) -> SideInput:
        if (self.handler is None) == (self.numaflow is None):
            raise ValueError("a side input must set exactly one of: handler, numaflow")
        return self

    @property
    def source(self) -> str:
        """What computes the value, for logs: the handler or the program's command."""
        if self.handler is not None:
            return self.handler
        assert self.numaflow is not None
        return "numaflow " + " ".join(self.numaflow.command or [self.numaflow.container.image
                                                                if self.numaflow.container else "?"])
