"""`serving`: a source answering HTTP requests with the pipeline's results (source.py), and the
`serve` sink that writes those results (sink.py); they meet in the requests KV bucket
(framework/isb/requests.py, docs/serving.md)."""

from typing import Any

from framework.spec.registry import ConnectorInfo
from vertices.serving.config import ServeSinkConfig, ServingSourceConfig


def _fits_server(config: Any, max_payload: int) -> None:
    from vertices.http.source import body_limit

    body_limit(config, max_payload)


SOURCE = ConnectorInfo(ServingSourceConfig, "vertices.serving.source:ServingSource", live=True, rank=9,
                       port=lambda config: config.port, server_check=_fits_server)
SINK = ConnectorInfo(ServeSinkConfig, "vertices.serving.sink:ServeSink", rank=20)
