"""`rabbitmq`: a queue, as a source (manual acks after the store)."""

from framework.spec.registry import ConnectorInfo
from vertices.rabbitmq.config import RabbitMqSourceConfig
from vertices.rabbitmq.keda import rabbitmq_trigger

SOURCE = ConnectorInfo(RabbitMqSourceConfig, "vertices.rabbitmq.source:RabbitMqSource", install="natsflow[rabbitmq]",
                       requires=("aio_pika",), keda_trigger=rabbitmq_trigger, rank=6)
