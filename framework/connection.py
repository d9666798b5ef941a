"""How every natsflow process reaches NATS: one settings model, read from flags or environment."""

from __future__ import annotations

import os
import re
import ssl
from typing import Any, Callable

from nats import errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from pydantic import BaseModel, ConfigDict

ENV_PREFIX = "NATS_"
_WHITESPACE = re.compile(r"\s")


def _parse_header_lines(raw: bytes) -> dict[str, str]:
    """Same result as nats-py's parser for `Name: Value` lines, without its per-character scan
    of every name, which cost ~45 us per received message with natsflow's four envelope headers.
    Values that are not UTF-8 keep their bytes as lone surrogates (`surrogateescape`), so a reader
    can tell them from text and refuse them (header_problem) instead of passing on U+FFFD."""
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if not key or _WHITESPACE.search(key):
            continue
        out[key] = value.strip().decode("utf-8", "surrogateescape")
    return out


_HEADER_KEY = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NEWLINES = str.maketrans({"\r": " ", "\n": " "})

# subject, reply ('' for none), payload, headers (a dict, or bytes already in wire form)
Publish = tuple[str, str, bytes, "dict[str, str] | bytes | None"]


class HeaderError(ValueError):
    """A header that cannot be written faithfully: a property of the message, not of the
    connection (nats-py's BadHeaderError is a nats.errors.Error, which callers take for an outage)."""


def header_problem(name: object, value: object) -> str | None:
    """Why `name: value` cannot be written as a NATS header, or None. Names must be HTTP tokens
    (RFC 9110; what nats-py and most other clients accept), values text that encodes as UTF-8."""
    if not isinstance(name, str) or not _HEADER_KEY.fullmatch(name):
        return f"header name {name!r} is not an HTTP token"
    if not isinstance(value, str):
        return f"header {name!r} value is {type(value).__name__}, not str"
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"header {name!r} value is not UTF-8"
    return None


_NOT_TOKEN = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")


def escape_header_name(name: str) -> str:
    """`name` with every character outside the token set replaced by `_`."""
    return _NOT_TOKEN.sub("_", name) or "_"


def escape_header_value(value: str) -> str:
    """`value` as UTF-8 text: bytes that were not UTF-8 (kept as lone surrogates by the parser)
    become `\\xNN`, any other lone surrogate `\\uDNNN`."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def encode_headers(headers: dict[str, str]) -> bytes:
    """Wire form of `headers`; raises HeaderError naming the first header it cannot write.
    Line breaks in values become spaces (a header is one line)."""
    parts = ["NATS/1.0\r\n"]
    for k, v in headers.items():
        problem = header_problem(k, v)
        if problem is not None:
            raise HeaderError(problem)
        parts.append(f"{k}: {v.translate(_NEWLINES).strip()}\r\n")
    parts.append("\r\n")
    return "".join(parts).encode()


class FastClient(Client):
    """nats-py's client plus two hot-path shortcuts: a faster header parser, and `publish_many`,
    which queues a whole batch of PUB/HPUB commands as one write (nats-py's publish() costs a
    coroutine, a regex per header and a buffer append per message)."""

    _parse_header_lines = staticmethod(_parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Callable[[Msg], None]] = {}

    async def subscribe_direct(self, subject: str, handler: Callable[[Msg], None]) -> Subscription:
        """Like subscribe(cb=...), but the plain function `handler` runs inside the read loop:
        no queue and no task switch per message. Only for handlers that never block."""

        async def unused(msg: Msg) -> None:  # pragma: no cover - direct dispatch bypasses it
            handler(msg)

        sub = await self.subscribe(subject, cb=unused)
        self._direct[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._direct.get(sid)
        if handler is None or sid not in self._subs:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        hdr = await self._process_headers(headers) if headers else None
        handler(self.msg_class(_client=self, subject=subject.decode(), reply=reply.decode(), data=data,
                               headers=hdr, _sid=sid))

    async def publish_many(self, items: list[Publish]) -> None:
        if self.is_closed:
            raise errors.ConnectionClosedError
        if self.is_draining_pubs:
            raise errors.ConnectionDrainingError
        limit = self._max_payload
        parts: list[bytes] = []
        for subject, reply, payload, headers in items:
            hdr = (headers if isinstance(headers, bytes) else encode_headers(headers)) if headers else b""
            if len(payload) + len(hdr) > limit:
                # The server counts headers too, and closes the connection on a violation.
                raise errors.MaxPayloadError
            if hdr:
                parts.append(f"HPUB {subject} {reply} {len(hdr)} {len(hdr) + len(payload)}\r\n".encode())
                parts.append(hdr)
            else:
                parts.append(f"PUB {subject} {reply} {len(payload)}\r\n".encode())
            parts.append(payload)
            parts.append(b"\r\n")
        if not parts:
            return
        await self._send_command(b"".join(parts))
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()


async def publish_many(nc: Client, items: list[Publish]) -> None:
    """Batch publish on a FastClient; a plain nats-py client gets one publish() per item."""
    if isinstance(nc, FastClient):
        await nc.publish_many(items)
        return
    for subject, reply, payload, headers in items:
        if isinstance(headers, bytes):
            headers = _parse_header_lines(headers[len(b"NATS/1.0\r\n"):])
        await nc.publish(subject, payload, reply=reply, headers=headers)


async def subscribe_fast(nc: Client, subject: str, handler: Callable[[Msg], None]) -> Subscription:
    """Direct dispatch on a FastClient; a plain nats-py client gets an ordinary callback."""
    if isinstance(nc, FastClient):
        return await nc.subscribe_direct(subject, handler)

    async def cb(msg: Msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)


async def reply_all(nc: Client, msgs: list, token: bytes) -> None:
    """Send one JetStream ack token (+ACK, -NAK, +WPI) to each message's reply subject."""
    await publish_many(nc, [(m.reply, "", token, None) for m in msgs])


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
        client = FastClient()
        await client.connect(**kwargs)
        return client
