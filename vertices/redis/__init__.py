"""Redis: a stream read through a consumer group (source `redisStreams`), and a stream or list
written to (sink `redis`)."""

from framework.spec.registry import ConnectorInfo
from vertices.redis.config import RedisSinkConfig, RedisStreamsConfig
from vertices.redis.keda import redis_streams_trigger

SOURCE = ConnectorInfo(RedisStreamsConfig, "vertices.redis.source:RedisStreamsSource", install="natsflow[redis]",
                       requires=("redis",), keda_trigger=redis_streams_trigger, rank=8)
SINK = ConnectorInfo(RedisSinkConfig, "vertices.redis.sink:RedisSink", install="natsflow[redis]", requires=("redis",),
                     rank=18)
