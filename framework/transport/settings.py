"""How every natsflow process reaches NATS: one settings model, read from flags or environment,
and one way to connect: bounded and clear at start, quiet while reconnecting, loud when closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import sys
from collections.abc import Callable, Iterator
from typing import Any

from nats import errors
from nats.aio.client import Client
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from framework.transport.client import FastClient

log = logging.getLogger("natsflow.connection")

ENV_PREFIX = "NATS_"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Exit codes of a natsflow process (docs: README, "CLI").
EXIT_NO_CONNECTION = 3  # the first connection failed (or a credential/TLS file is missing)
EXIT_CONNECTION_LOST = 4  # the connection was closed for good while running


class ConnectError(Exception):
    """NATS could not be reached, or the settings cannot work; `str()` is the one line to show."""


class ConnectStopped(Exception):
    """A stop was requested (SIGTERM/SIGINT) before the first connection was made."""


def mask_url(url: str) -> str:
    """`url` (or a comma-separated list) with credentials hidden: `nats://alice:***@host`,
    `nats://***@host` for a token. Every URL natsflow prints or logs goes through this."""
    return ",".join(_mask_one(u) for u in url.split(","))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return url
    userinfo, host = netloc.rsplit("@", 1)  # the host follows the last '@', as urlparse reads it
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}{sep}{user + ':***' if colon else '***'}@{host}{slash}{path}"


def describe(exc: BaseException) -> str:
    """A connection error as a short cause: 'authorization violation', 'connection refused'."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, errors.AuthorizationError):
        return "authorization violation"
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError too
        return "no answer"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    text = (str(exc) or type(exc).__name__).strip()
    text = text.removeprefix("nats: ")
    if len(text) > 1 and text[0] == text[-1] == "'":  # the server's own -ERR text, e.g. 'Authorization Violation'
        text = text[1:-1].lower()
    return text


def _hopeless(exc: BaseException) -> bool:
    """An error at connect time that retrying cannot fix: bad credentials, a TLS failure."""
    if isinstance(exc, (ssl.SSLError, errors.AuthorizationError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, errors.Error) and ("authorization" in text or "authentication" in text or "ssl" in text)


# Errors that end up as a disconnect: the disconnected line names them, nothing more is logged.
_CONNECTION_ERRORS = (errors.UnexpectedEOF, errors.StaleConnectionError, OSError)


def _log_lost(message: str) -> None:
    log.error("%s", message)


def exit_now(code: int, line: str, level: int = logging.ERROR) -> None:
    """End this process at once with `code` after one log line. For a worker whose NATS
    connection is gone: nothing it holds can be acked any more (JetStream redelivers it), and
    its clean-up paths would only raise on the dead connection."""
    log.log(level, "%s", line)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_lost(message: str) -> None:
    exit_now(EXIT_CONNECTION_LOST, f"natsflow: {message}; exiting so that the process is restarted")


_on_lost: Callable[[str], None] = _log_lost


def exit_when_lost() -> None:
    """Called by the CLI: in a natsflow process a connection closed for good (the server closed
    it, or reconnecting gave up) ends the process with EXIT_CONNECTION_LOST, so that its
    supervisor (`natsflow run`, Kubernetes) restarts it. Library users only get the log line."""
    global _on_lost
    _on_lost = _exit_lost


class ConnectionWatch:
    """nats-py's callbacks for one client. Until the first connection is made it only remembers
    the last error and flags one that retrying cannot fix; from then on it logs one line per
    state change (disconnected, reconnected) instead of nats-py's traceback per attempt, and a
    close nobody asked for goes to `on_closed`."""

    def __init__(self, client: FastClient, shown_url: str, on_closed: Callable[[str], None] | None,
                 on_disconnected: Callable[[], None] | None = None):
        self.client = client
        self.shown_url = shown_url
        self.on_closed = on_closed
        self.on_disconnected = on_disconnected
        self.connected = False
        self.down = False
        self.hopeless = asyncio.Event()
        self.last_error: BaseException | None = None

    async def error(self, exc: BaseException) -> None:
        if not self.connected:
            if not self.hopeless.is_set():  # the error that made us give up is the one to show
                self.last_error = exc
                if _hopeless(exc):
                    self.hopeless.set()
            return
        self.last_error = exc
        if isinstance(exc, _CONNECTION_ERRORS) or not self.client.is_connected:
            log.debug("nats: %s (%s)", describe(exc), self.shown_url)  # the state-change line says it
            return
        log.warning("nats: %s (%s)", describe(exc), self.shown_url)  # e.g. a slow consumer, a permission

    async def disconnected(self) -> None:
        if not self.connected or self.down or self.client.is_closed or self.client.closing:
            return
        self.down = True
        cause = f" ({describe(self.last_error)})" if self.last_error is not None else ""
        log.warning("nats: disconnected from %s%s; reconnecting", self.shown_url, cause)
        if self.on_disconnected is not None:
            self.on_disconnected()

    async def reconnected(self) -> None:
        self.down = False
        self.last_error = None
        log.info("nats: reconnected to %s", self.shown_url)

    async def closed(self) -> None:
        if not self.connected or self.client.closing:
            return
        cause = self.client.last_error or self.last_error
        reason = describe(cause) if cause is not None else "closed by the server"
        (self.on_closed or _on_lost)(f"nats: connection to {self.shown_url} closed ({reason})")


_FILES = {"creds": ("credentials file", "--nats-creds"), "tls_ca": ("TLS CA file", "--tls-ca"),
          "tls_cert": ("TLS certificate file", "--tls-cert"), "tls_key": ("TLS key file", "--tls-key")}
_ENV_NAMES = {"connect_timeout": "NATSFLOW_CONNECT_TIMEOUT"}


class NatsSettings(BaseModel):
    """Connection settings; every CLI command takes them as flags, defaulting to `NATS_*` env vars
    (and `NATSFLOW_CONNECT_TIMEOUT`)."""

    model_config = ConfigDict(frozen=True)

    url: str | None = None
    token: str | None = Field(None, repr=False)
    user: str | None = None
    password: str | None = Field(None, repr=False)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    # How long the first connection may take before the command fails (a process that is
    # already running reconnects for as long as it takes).
    connect_timeout: float = Field(DEFAULT_CONNECT_TIMEOUT_S, gt=0, le=24 * 3600)

    # a logged or printed settings object shows no credentials
    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name == "url" and value else value

    @staticmethod
    def env_name(field: str) -> str:
        return _ENV_NAMES.get(field, ENV_PREFIX + field.upper())

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> NatsSettings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {f: env.get(cls.env_name(f)) for f in cls.model_fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except ValidationError as exc:  # only connect_timeout has rules; no secret is echoed
            first = exc.errors()[0]
            field = str(first["loc"][0])
            raise ConnectError(f"{cls.env_name(field)}: {first['msg']} (got {first['input']!r})") from None

    def to_env(self) -> dict[str, str]:
        """The environment that hands these settings to a child process."""
        return {self.env_name(k): str(v) for k, v in self.model_dump().items() if v is not None}

    def with_url(self, url: str | None) -> NatsSettings:
        return self if url is None else self.model_copy(update={"url": url})

    @property
    def shown_url(self) -> str:
        return mask_url(self.url or "")

    def _check_files(self) -> None:
        for field, (what, flag) in _FILES.items():
            path = getattr(self, field)
            if path and not os.path.isfile(path):
                raise ConnectError(f"nats: {what} not found: {path} ({flag} / {self.env_name(field)})")
            if path and not os.access(path, os.R_OK):
                raise ConnectError(f"nats: {what} not readable: {path} ({flag} / {self.env_name(field)})")

    def _tls(self) -> ssl.SSLContext | None:
        if not (self.tls_ca or self.tls_cert):
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except ssl.SSLError as exc:
            raise ConnectError(f"nats: cannot load the TLS files ({self._tls_files()}): {exc.reason or exc}") from None
        return ctx

    def _tls_files(self) -> str:
        files = ("tls_ca", "tls_cert", "tls_key")
        return ", ".join(f"{_FILES[f][1]} {getattr(self, f)}" for f in files if getattr(self, f))

    def _options(self, name: str, watch: ConnectionWatch) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "servers": [u.strip() for u in (self.url or "").split(",")],  # connect() checked it is set
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": min(5.0, self.connect_timeout),
            # Large pending buffers let a whole batch of publishes go out in one write.
            "pending_size": 64 * 1024 * 1024,
            "error_cb": watch.error,
            "disconnected_cb": watch.disconnected,
            "reconnected_cb": watch.reconnected,
            "closed_cb": watch.closed,
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
        return kwargs

    async def connect(self, name: str, *, stopping: asyncio.Event | None = None,
                      on_closed: Callable[[str], None] | None = None,
                      on_disconnected: Callable[[], None] | None = None) -> Client:
        """A connected client, or within `connect_timeout`: ConnectError with the cause (at once
        for bad credentials or a TLS failure; a refused or silent server is retried until then),
        or ConnectStopped as soon as `stopping` is set. Once connected, the client reconnects
        for as long as it takes; a close nobody asked for calls `on_closed` (default: the
        process-wide rule, see `exit_when_lost`); `on_disconnected` hears of each outage."""
        if not self.url:
            raise ConnectError("nats: no NATS URL: pass --nats-url or set NATS_URL")
        self._check_files()
        client = FastClient()
        watch = ConnectionWatch(client, self.shown_url, on_closed, on_disconnected)
        attempt = asyncio.ensure_future(client.connect(**self._options(name, watch)))
        hopeless = asyncio.ensure_future(watch.hopeless.wait())
        stop = asyncio.ensure_future(stopping.wait() if stopping is not None else asyncio.Event().wait())
        try:
            await asyncio.wait({attempt, hopeless, stop}, timeout=self.connect_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            hopeless.cancel()
            stop.cancel()
        if attempt.done() and not attempt.cancelled():
            exc = attempt.exception()
            if exc is None:
                watch.connected = True
                return client
            if isinstance(exc, ImportError) and self.creds:
                raise ConnectError("nats: --nats-creds needs the nkeys package (pip install nkeys)") from None
            raise ConnectError(f"nats: {describe(exc)} for {self.shown_url}") from None  # e.g. a malformed URL
        attempt.cancel()
        await asyncio.gather(attempt, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1)
        if stopping is not None and stopping.is_set():
            raise ConnectStopped(f"stopped while connecting to {self.shown_url}")
        raise ConnectError(self._failure(watch))

    def _failure(self, watch: ConnectionWatch) -> str:
        last = watch.last_error
        if watch.hopeless.is_set() and last is not None:
            cause = describe(last)
            if isinstance(last, ssl.SSLError) and not self.tls_ca:
                cause += " (the server requires TLS: pass its CA with --tls-ca / NATS_TLS_CA)"
            return f"nats: {cause} for {self.shown_url}"
        cause = describe(last) if last is not None else "no answer"
        return f"nats: {cause} for {self.shown_url} (gave up after {self.connect_timeout:g}s)"
