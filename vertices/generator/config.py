"""The `generator` source's block: how many messages, how fast, how large."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from framework.spec.types import HOUR, INT64_MAX, Duration, Model, WholeNumber, within, within_seconds


class GeneratorConfig(Model):
    # bench/throughput.py asks for 10,000,000 a second to mean "as fast as it goes"
    rpu: Annotated[WholeNumber, within(1, 100_000_000, "far more than one generator makes in a second")] = Field(
        5, description="messages per `duration`")
    duration: Annotated[Duration, within_seconds(0.001, HOUR)] = 1.0
    # The generator builds messages 500 at a time; NATS's default max_payload is 1 MiB.
    msg_size: Annotated[WholeNumber, within(0, 1 << 20, "1 MiB, NATS's default max payload")] = 8
    key_count: Annotated[WholeNumber, within(0, 1_000_000)] = 0
    value: Annotated[WholeNumber, within(-INT64_MAX - 1, INT64_MAX, "a 64-bit integer")] | None = None
    total: Annotated[WholeNumber, within(0, INT64_MAX, "a 64-bit integer")] | None = Field(
        None, description="stop after this many messages (natsflow extension)")
