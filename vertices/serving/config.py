"""The `serving` source's and `serve` sink's blocks."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from framework.spec.types import HOUR, Duration, Model, WholeNumber, within, within_seconds
from vertices.http.config import HttpAuth


class ServingSourceConfig(Model):
    port: Annotated[WholeNumber, within(0, 65535, "a TCP port; 0 picks a free one")] = 8080
    host: str = "0.0.0.0"
    auth: HttpAuth | None = None
    request_timeout: Annotated[Duration, within_seconds(0.001, HOUR)] = Field(
        30.0, description="how long /v1/process/sync (and an SSE stream) waits for the complete result: then 504")
    msg_id_header: str | None = Field(
        None, pattern=r"^[A-Za-z0-9-]{1,100}$",
        description="a request header whose value names the request: a client retrying with the same value gets "
                    "the same request (its message is stored once)")
    # None: as large as the server's max_payload allows (vertices/http/source.py: body_limit).
    max_body_size: Annotated[WholeNumber, within(1, 64 << 20, "64 MiB, the largest max_payload a NATS server "
                                                 "accepts")] | None = None


class ServeSinkConfig(Model):
    """`serve: {}`: nothing to configure; results go to the pipeline's requests bucket."""
