"""The `jetstream` source's and sink's blocks."""

from __future__ import annotations

from enum import Enum

from pydantic import Field, field_validator

from framework.spec.names import RESERVED_STREAM_PREFIX
from framework.spec.types import ConsumerName, Model, PublishSubject, Secret, StreamName


class DeliverPolicy(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    all = "all"
    new = "new"
    last = "last"


class JetStreamSourceConfig(Model):
    url: Secret | None = None
    stream: StreamName = Field(description="an existing stream; of natsflow's nf_* ones only another "
                                           "pipeline's dead letters and archives (reserved_stream_problem)")
    consumer: ConsumerName | None = None
    deliver_policy: DeliverPolicy = DeliverPolicy.all


class JetStreamSinkConfig(Model):
    url: Secret | None = None
    stream: StreamName
    subject: PublishSubject

    @field_validator("stream")
    @classmethod
    def _not_natsflows(cls, stream: str) -> str:
        if stream.startswith(RESERVED_STREAM_PREFIX):
            raise ValueError(f"stream names starting with {RESERVED_STREAM_PREFIX!r} are natsflow's buffers, "
                             "dead letters and KV buckets; a sink writing there would bypass them: use another name")
        return stream
