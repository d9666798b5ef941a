"""`mqtt`: a topic filter, as a source (a persistent session, acks after the store)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from framework.spec.registry import ConnectorInfo, Problem
from vertices.mqtt.config import MqttSourceConfig

if TYPE_CHECKING:
    from framework.spec import Vertex


def one_replica(config: MqttSourceConfig, vertex: Vertex, pipeline: str, where: str) -> list[Problem]:
    """Replicas sharing the session's client id would disconnect each other."""
    if vertex.scale.min > 1:
        return [(f"{where}.scale.min", "an mqtt source runs as one replica (replicas sharing its client id would "
                                       "disconnect each other); set min: 1")]
    return []


SOURCE = ConnectorInfo(MqttSourceConfig, "vertices.mqtt.source:MqttSource", install="natsflow[mqtt]",
                       requires=("aiomqtt",), live=True, check=one_replica, rank=7)
