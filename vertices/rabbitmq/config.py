"""The `rabbitmq` source's block."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from framework.spec.types import Model, Secret, WholeNumber, within


class RabbitMqSourceConfig(Model):
    url: Secret = "amqp://guest:guest@127.0.0.1:5672/"
    queue: str = Field(min_length=1)
    prefetch: Annotated[WholeNumber, within(1, 65535, "AMQP's prefetch count is 16 bits")] = 500
