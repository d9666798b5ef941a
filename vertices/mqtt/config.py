"""The `mqtt` source's block."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from framework.spec.types import Model, Secret, whole_number


class MqttSourceConfig(Model):
    url: Secret = "mqtt://127.0.0.1:1883"
    topic: str = Field(min_length=1)
    qos: Annotated[Literal[0, 1, 2], BeforeValidator(whole_number)] = 1  # true must not pass as 1
    client_id: str | None = Field(None, description="fixed session id (default from the vertex)")
