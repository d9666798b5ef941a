"""How every natsflow process reaches NATS: one settings model, read from flags or environment."""

from __future__ import annotations

import os
import ssl
from typing import Any

import nats
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "NATS_"


class NatsSettings(BaseModel):
    """Connection settings; every CLI command takes them as flags, defaulting to `NATS_*` env vars."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> "NatsSettings":
        env = dict(os.environ if env is None else env)
        values = {f: env.get(ENV_PREFIX + f.upper()) for f in cls.model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that hands these settings to a child process."""
        return {ENV_PREFIX + k.upper(): v for k, v in self.model_dump().items() if v is not None}

    def with_url(self, url: str | None) -> "NatsSettings":
        return self if url is None else self.model_copy(update={"url": url})

    def _tls(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    async def connect(self, name: str, **options: Any) -> Client:
        if not self.url:
            raise RuntimeError("no NATS URL: pass --nats-url or set NATS_URL")
        kwargs: dict[str, Any] = {
            "servers": [u.strip() for u in self.url.split(",")],
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            # Large pending buffers let a whole batch of publishes go out in one write.
            "pending_size": 64 * 1024 * 1024,
        }
        if self.token:
            kwargs["token"] = self.token
        if self.user:
            kwargs["user"], kwargs["password"] = self.user, self.password
        if self.creds:
            kwargs["user_credentials"] = self.creds
        tls = self._tls()
        if tls:
            kwargs["tls"] = tls
        kwargs.update(options)
        return await nats.connect(**kwargs)
