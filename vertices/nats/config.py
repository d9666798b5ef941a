"""The `nats` source's and sink's blocks (core NATS subjects)."""

from __future__ import annotations

from framework.spec.types import Model, PublishSubject, QueueGroup, Secret, SubscribeSubject


class NatsSourceConfig(Model):
    url: Secret | None = None
    subject: SubscribeSubject
    queue: QueueGroup | None = None


class NatsSinkConfig(Model):
    url: Secret | None = None
    subject: PublishSubject
