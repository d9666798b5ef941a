"""The fast NATS client: nats-py's Client with hot-path shortcuts. The only module in natsflow
that touches nats-py's private API, which is why pyproject.toml pins nats-py to the minor
release this was written against and tests/framework/transport/test_nats_py_contract.py checks
every internal named in NATS_PY_INTERNALS before a newer one is allowed in.
"""

from __future__ import annotations

from collections.abc import Callable

from nats import errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from framework.transport.headers import HEADER_LINE, encode_headers, parse_header_lines

# What FastClient relies on, besides nats-py's public API (checked by the contract test):
#   Client._parse_header_lines(raw) -> dict   staticmethod, overridden with a faster parser
#   Client._process_msg(sid, subject, reply, data, headers)   overridden for direct dispatch
#   Client._process_headers(headers) -> dict | None   coroutine, parses a received header block
#   Client._subs: dict[int, Subscription]     live subscriptions by sid
#   Client._send_command(cmd: bytes)          queues raw protocol bytes for the writer
#   Client._flush_queue / Client._flush_pending()   wake the writer, as publish() does
#   Client._max_payload                       the server's max_payload
#   Client.msg_class                          the Msg type it builds
#   Subscription._id                          the sid of a subscription
NATS_PY_INTERNALS = {
    "Client": ("_parse_header_lines", "_process_msg", "_process_headers", "_send_command", "_flush_pending",
               "msg_class"),
    "Client instance": ("_subs", "_flush_queue", "_max_payload"),
    "Subscription instance": ("_id",),
}
NATS_PY_WRITTEN_FOR = "2.16"  # the minor release these internals were read from

# subject, reply ('' for none), payload, headers (a dict, or bytes already in wire form)
Publish = tuple[str, str, bytes, "dict[str, str] | bytes | None"]


class FastClient(Client):
    """nats-py's client plus two hot-path shortcuts: a faster header parser, and `publish_many`,
    which queues a whole batch of PUB/HPUB commands as one write (nats-py's publish() costs a
    coroutine, a regex per header and a buffer append per message)."""

    _parse_header_lines = staticmethod(parse_header_lines)

    def __init__(self) -> None:
        super().__init__()
        self._direct: dict[int, Callable[[Msg], None]] = {}
        self.closing = False  # close()/drain() was called: the end of the connection is ours

    async def close(self) -> None:
        self.closing = True
        await super().close()

    async def drain(self) -> None:
        self.closing = True
        await super().drain()

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
            headers = parse_header_lines(headers[len(HEADER_LINE):])
        await nc.publish(subject, payload, reply=reply, headers=headers)


async def subscribe_fast(nc: Client, subject: str, handler: Callable[[Msg], None]) -> Subscription:
    """Direct dispatch on a FastClient; a plain nats-py client gets an ordinary callback."""
    if isinstance(nc, FastClient):
        return await nc.subscribe_direct(subject, handler)

    async def cb(msg: Msg) -> None:
        handler(msg)

    return await nc.subscribe(subject, cb=cb, pending_msgs_limit=-1, pending_bytes_limit=-1)


async def reply_all(nc: Client, msgs: list[Msg], token: bytes) -> None:
    """Send one JetStream ack token (+ACK, -NAK, +WPI) to each message's reply subject."""
    await publish_many(nc, [(m.reply, "", token, None) for m in msgs])
