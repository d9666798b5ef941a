"""`kafka`: a topic, as a source (a consumer group member) and a sink (a producer)."""

from framework.spec.registry import ConnectorInfo
from vertices.kafka.config import KafkaSinkConfig, KafkaSourceConfig
from vertices.kafka.keda import kafka_trigger

SOURCE = ConnectorInfo(KafkaSourceConfig, "vertices.kafka.source:KafkaSource", install="natsflow[kafka]",
                       requires=("aiokafka",), keda_trigger=kafka_trigger, rank=5)
SINK = ConnectorInfo(KafkaSinkConfig, "vertices.kafka.sink:KafkaSink", install="natsflow[kafka]",
                     requires=("aiokafka",), rank=16)
