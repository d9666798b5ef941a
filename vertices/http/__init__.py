"""`http`: a source taking POSTs (vertices/sources/http.py) and a sink making requests
(vertices/sinks/http.py); their modules move into this folder later."""

from typing import Any

from framework.spec.registry import ConnectorInfo
from vertices.http.config import HttpSinkConfig, HttpSourceConfig


def _fits_server(config: Any, max_payload: int) -> None:
    from vertices.sources.http import body_limit

    body_limit(config, max_payload)


# The source serves with the web stack natsflow's core already has (the UI, /metrics); the sink
# needs an HTTP client, the `http` extra.
SOURCE = ConnectorInfo(HttpSourceConfig, "vertices.sources.http:HttpSource", live=True, rank=2,
                       port=lambda config: config.port, server_check=_fits_server)
SINK = ConnectorInfo(HttpSinkConfig, "vertices.sinks.http:HttpSink", install="natsflow[http]", requires=("aiohttp",),
                     rank=19)
