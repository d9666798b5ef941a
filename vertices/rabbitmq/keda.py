"""KEDA's `rabbitmq` scaler for a RabbitMQ source: the queue's length."""

from __future__ import annotations

from framework.k8s.keda import KedaTrigger, SecretKey, UpstreamScaling
from framework.spec.types import SecretRef


def rabbitmq_trigger(up: UpstreamScaling) -> KedaTrigger:
    """The AMQP URL carries credentials, so KEDA always reads it from a Secret (parameter `host`)."""
    cfg, s = up.config, up.scale
    meta = {"protocol": "amqp", "queueName": cfg.queue, "mode": "QueueLength", "value": str(s.lag_threshold),
            "activationValue": str(s.activation_lag_threshold)}
    ref = cfg.url if isinstance(cfg.url, SecretRef) else SecretRef(name=up.secret, key="host")
    return KedaTrigger("rabbitmq", meta, [SecretKey("host", ref.name, ref.key)])
