"""`http`: a source taking POSTs (source.py) and a sink making requests (sink.py)."""

from typing import Any

from framework.spec.registry import ConnectorInfo
from vertices.http.config import HttpSinkConfig, HttpSourceConfig


def _fits_server(config: Any, max_payload: int) -> None:
    from vertices.http.source import body_limit

    body_limit(config, max_payload)


# The source serves with the web stack natsflow's core already has (the UI, /metrics); the sink
# needs an HTTP client, the `http` extra.
SOURCE = ConnectorInfo(HttpSourceConfig, "vertices.http.source:HttpSource", live=True, rank=2,
                       port=lambda config: config.port, server_check=_fits_server)
SINK = ConnectorInfo(HttpSinkConfig, "vertices.http.sink:HttpSink", install="natsflow[http]", requires=("aiohttp",),
                     rank=19)
