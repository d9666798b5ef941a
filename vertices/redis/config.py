"""The `redisStreams` source's and the `redis` sink's blocks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from framework.spec.types import DAY, INT64_MAX, Duration, Model, Secret, WholeNumber, within, within_seconds


class RedisStreamsConfig(Model):
    url: Secret = "redis://127.0.0.1:6379/0"
    stream: str = Field(min_length=1)
    group: str = Field(min_length=1)
    consumer: str | None = Field(None, description="consumer name (default $NATSFLOW_REPLICA_ID or the hostname)")
    start_id: str = Field("0", description="where a new group starts: 0 = all, $ = new only")
    value_field: str = Field("value", description="the field holding the payload")
    key_field: str | None = Field("key", description="a field whose value is the message key")
    claim_idle: Annotated[Duration, within_seconds(0.001, DAY)] = Field(
        60.0, description="take over entries another consumer left unacked this long")


class RedisSinkConfig(Model):
    url: Secret = "redis://127.0.0.1:6379/0"
    stream: str | None = None
    list: str | None = None
    max_len: Annotated[WholeNumber, within(1, INT64_MAX, "a 64-bit integer")] | None = Field(
        None, description="trim the stream to about this length")

    @model_validator(mode="after")
    def _one_target(self) -> RedisSinkConfig:
        if (self.stream is None) == (self.list is None):
            raise ValueError("set exactly one of stream or list")
        return self
