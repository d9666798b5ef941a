"""`mqtt`: a topic filter, as a source (a persistent session, acks after the store)."""

from __future__ import annotations

from framework.spec.registry import ConnectorInfo, Placement, Problem
from vertices.mqtt.config import MqttSourceConfig


def one_replica(config: MqttSourceConfig, at: Placement) -> list[Problem]:
    """Replicas sharing the session's client id would disconnect each other."""
    if at.vertex.scale.min > 1:
        return [(f"{at.vertex_path}.scale.min", "an mqtt source runs as one replica (replicas sharing its client "
                                                 "id would disconnect each other); set min: 1")]
    return []


SOURCE = ConnectorInfo(MqttSourceConfig, "vertices.mqtt.source:MqttSource", install="natsflow[mqtt]",
                       requires=("aiomqtt",), live=True, check=one_replica, rank=7)
