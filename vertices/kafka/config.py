"""The `kafka` source's and sink's blocks: brokers, topic, TLS and SASL they share."""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field, model_validator

from framework.spec.types import Flag, Model, Secret


class KafkaTls(Model):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: Flag = False

    @model_validator(mode="after")
    def _pair(self) -> KafkaTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("certFile and keyFile go together (a client certificate needs its key)")
        return self


class SaslMechanism(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    plain = "plain"
    scram_sha_256 = "scram-sha-256"
    scram_sha_512 = "scram-sha-512"


class KafkaSasl(Model):
    mechanism: SaslMechanism = SaslMechanism.plain
    username: Secret
    password: Secret


class KafkaConnection(Model):
    """What a Kafka source and sink share: where the brokers are and how to log in."""

    brokers: list[str] = Field(min_length=1, description="host:port bootstrap servers")
    topic: str = Field(min_length=1)
    tls: KafkaTls | None = None
    sasl: KafkaSasl | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="extra aiokafka client options")


class KafkaSourceConfig(KafkaConnection):
    consumer_group: str = Field(min_length=1)


class KafkaSinkConfig(KafkaConnection):
    set_key: Flag = Field(False, description="the message's keys, joined by ':', as the record key")
