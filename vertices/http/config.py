"""The `http` source's and sink's blocks."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

from pydantic import Field

from framework.spec.types import HOUR, Duration, Model, Secret, WholeNumber, within, within_seconds


class HttpAuth(Model):
    token: Secret


class HttpSourceConfig(Model):
    port: Annotated[WholeNumber, within(0, 65535, "a TCP port; 0 picks a free one")] = 8080
    host: str = "0.0.0.0"
    auth: HttpAuth | None = None
    # None: as large as the server's max_payload allows (vertices/http/source.py: body_limit).
    max_body_size: Annotated[WholeNumber, within(1, 64 << 20, "64 MiB, the largest max_payload a NATS server "
                                                 "accepts")] | None = None


class HttpMethod(str, Enum):  # noqa: UP042 - str mixin: str() and format() stay as they were
    post = "POST"
    put = "PUT"
    patch = "PATCH"


class HttpSinkConfig(Model):
    url: str = Field(pattern=r"^https?://")
    method: HttpMethod = HttpMethod.post
    headers: dict[str, Secret] = Field(default_factory=dict)
    timeout: Annotated[Duration, within_seconds(0.001, HOUR)] = 10.0
    concurrency: Annotated[WholeNumber, within(1, 1000, "each request in flight holds a connection")] = Field(
        16, description="requests in flight at once")
