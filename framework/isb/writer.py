"""Writing to buffers: publish many messages and await their acks together, and the back-pressure
gate that keeps each buffer under its usage limit (`onFull`).

Publishes go out with a reply inbox per writer rather than through nats-py's publish(), which
costs a future wrapper per message; see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from framework.runtime.retry import exponential
from framework.spec import OnFull
from framework.transport.client import Publish, publish_many, subscribe_fast
from framework.transport.headers import HeaderError, encode_headers

log = logging.getLogger("natsflow.buffer")

# JSStreamStoreFailedF with discard=new: "maximum messages exceeded" (bufferMaxLength) and, in
# nats-server 2.15 on one server or a cluster, "maximum bytes exceeded" (spec.buffers.maxBytes).
ERR_STREAM_FULL = 10077
# No stream answered: not provisioned, or (in a cluster) the stream is electing a new leader.
ERR_NO_RESPONDERS = 503


@dataclass(slots=True)
class OutMessage:
    """One message to publish: headers as a dict, or already in wire form."""
    subject: str
    payload: bytes
    headers: dict[str, str] | bytes  # bytes: already encoded (see encode_envelope)


class PublishError(Exception):
    """JetStream refused to store a message; `code` is its err_code."""
    def __init__(self, code: int, description: str):
        self.code = code
        super().__init__(f"{description} (err_code {code})")


class JetStreamPublisher:
    """Publishes many messages and awaits all their acks together (one reply inbox per process)."""

    def __init__(self, nc: Client, ack_timeout: float = 5.0):
        self._nc = nc
        self._timeout = ack_timeout
        self._prefix = nc.new_inbox() + "."
        self._futures: dict[str, asyncio.Future[bytes | None]] = {}
        self._seq = 0
        self._sub: Subscription | None = None
        self.last_seq: dict[str, int] = {}  # subject -> highest stream sequence acked (for watermarks)

    async def start(self) -> None:
        self._sub = await subscribe_fast(self._nc, self._prefix + "*", self._on_ack)

    def _on_ack(self, msg: Msg) -> None:
        fut = self._futures.pop(msg.subject[len(self._prefix):], None)
        if fut is not None and not fut.done():
            # an empty body with a status header is "no responders": the stream does not exist
            fut.set_result(msg.data if msg.data else None)

    async def publish(self, msgs: list[OutMessage]) -> list[Exception | None]:
        """Publish all, wait for every ack; per message None (stored or duplicate) or the error.
        Messages whose ack did not come are retried with the same msg id (dedup makes it safe)."""
        results: list[Exception | None] = [None] * len(msgs)
        todo = self._writable(msgs, results)
        for _attempt in range(3):
            if not todo:
                break
            loop = asyncio.get_running_loop()
            waits: list[tuple[int, asyncio.Future[bytes | None]]] = []
            batch: list[Publish] = []
            for i in todo:
                self._seq += 1
                token = str(self._seq)
                fut = loop.create_future()
                self._futures[token] = fut
                m = msgs[i]
                batch.append((m.subject, self._prefix + token, m.payload, m.headers))
                waits.append((i, fut))
            await publish_many(self._nc, batch)
            _, pending = await asyncio.wait([f for _, f in waits], timeout=self._timeout)
            todo = []
            last_ack: dict[str, bytes | None] = {}
            for i, fut in waits:
                if fut in pending:
                    fut.cancel()
                    todo.append(i)
                    results[i] = TimeoutError(f"no publish ack within {self._timeout:.1f}s")
                    continue
                data = fut.result()
                results[i] = _puback_error(data)
                if results[i] is None:
                    last_ack[msgs[i].subject] = data
            for subject, data in last_ack.items():  # one JSON parse per subject and batch
                if data is not None:  # always: an ack without error has a body
                    self.last_seq[subject] = max(self.last_seq.get(subject, 0), int(json.loads(data)["seq"]))
            if not todo:
                break
            self._futures = {k: f for k, f in self._futures.items() if not f.done()}
        return results

    @property
    def max_payload(self) -> int:
        """The server's limit for one message, headers included."""
        return self._nc.max_payload

    def _writable(self, msgs: list[OutMessage], results: list[Exception | None]) -> list[int]:
        """Indexes of the messages the server can take; the others get their error in `results`
        (one bad message must not fail, or close the connection under, the whole batch)."""
        limit = self.max_payload
        ok = []
        for i, m in enumerate(msgs):
            if isinstance(m.headers, dict):
                try:
                    m.headers = encode_headers(m.headers) if m.headers else b""
                except HeaderError as exc:
                    results[i] = exc
                    continue
            size = len(m.payload) + len(m.headers)
            if size > limit:
                results[i] = Unpublishable(f"{size} bytes with headers, over the server's max_payload {limit}")
                continue
            ok.append(i)
        return ok

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None


class Unpublishable(ValueError):
    """A message the server would refuse whatever its state (too large for max_payload)."""


def _puback_error(data: bytes | None) -> Exception | None:
    if data is None:
        return PublishError(ERR_NO_RESPONDERS, "no stream listens on this subject (no responders)")
    if b'"error"' not in data:
        return None
    err = json.loads(data)["error"]
    return PublishError(int(err.get("err_code", err.get("code", 0))), err.get("description", "error"))


class BufferGate:
    """Tells a writer how many messages a buffer can take before it reaches its usage limit.

    The count of messages in a work-queue stream is exactly pending + ack-pending of its consumer.
    We keep an estimate (last known count + what we wrote since) and ask the server only when the
    estimate says full or is older than `refresh`, so a healthy pipeline pays one request a second.
    """

    def __init__(self, js: JetStreamContext, stream: str, soft_limit: int, refresh: float = 1.0):
        self._js = js
        self.stream = stream
        self.soft_limit = soft_limit
        self._refresh = refresh
        self._known = 0
        self._written = 0
        self._at = 0.0
        self._warned = 0.0

    async def _update(self) -> None:
        info = await self._js.stream_info(self.stream)
        self._known = info.state.messages
        self._written = 0
        self._at = time.monotonic()

    async def room(self, wanted: int) -> int:
        estimate = self._known + self._written
        if estimate + wanted > self.soft_limit or time.monotonic() - self._at > self._refresh:
            try:
                await self._update()
            except (TimeoutError, nats_errors.Error) as exc:
                # Server restarting, JetStream not ready, stream not provisioned yet: no room
                # until we know better; the writer waits and asks again.
                if time.monotonic() - self._warned > 5:
                    log.warning("cannot read the state of buffer %s (%s: %s); waiting",
                                self.stream, type(exc).__name__, exc)
                    self._warned = time.monotonic()
                return 0
            estimate = self._known
        return max(0, self.soft_limit - estimate)

    def wrote(self, n: int) -> None:
        self._written += n

    def unanswered(self, err: Exception) -> None:
        """A publish got no answer; logged at most every 5 s while it lasts."""
        if time.monotonic() - self._warned > 5:
            log.warning("buffer %s did not store a message (%s); retrying it", self.stream, err)
            self._warned = time.monotonic()

    def saw_full(self) -> None:
        self._known = self.soft_limit
        self._at = time.monotonic()


class BufferWriter:
    """Writes to the buffers of out-edges with back pressure: `retryUntilSuccess` waits for room
    (memory stays bounded because the caller does not read more until this returns),
    `discardLatest` drops what does not fit and reports the count."""

    def __init__(self, js: JetStreamContext, publisher: JetStreamPublisher, max_wait_step: float = 0.25):
        self._js = js
        self._pub = publisher
        self._gates: dict[str, BufferGate] = {}
        self._max_wait_step = max_wait_step

    @property
    def max_payload(self) -> int:
        return self._pub.max_payload

    def add_target(self, key: str, stream: str, soft_limit: int) -> None:
        self._gates[key] = BufferGate(self._js, stream, soft_limit)

    async def room(self, key: str, wanted: int) -> int:
        return await self._gates[key].room(wanted)

    async def write(self, batches: dict[str, tuple[OnFull, list[OutMessage]]]) -> dict[str, int]:
        """Write every target's messages; returns how many were discarded per target."""
        dropped = {key: 0 for key in batches}
        todo = {key: list(msgs) for key, (_, msgs) in batches.items() if msgs}
        waits: Iterator[float] | None = None  # made only when the writer has to wait
        while todo:
            sending: list[tuple[str, OutMessage]] = []
            for key, msgs in list(todo.items()):
                gate = self._gates[key]
                room = await gate.room(len(msgs))
                take = msgs[:room]
                rest = msgs[room:]
                if rest and batches[key][0] is OnFull.discard_latest:
                    dropped[key] += len(rest)
                    rest = []
                sending.extend((key, m) for m in take)
                if rest:
                    todo[key] = rest
                else:
                    del todo[key]
            if sending:
                errors = await self._pub.publish([m for _, m in sending])
                stored = False
                for (key, m), err in zip(sending, errors):
                    self._gates[key].wrote(1)
                    if err is None:
                        stored = True
                        continue
                    if isinstance(err, PublishError) and err.code == ERR_STREAM_FULL:
                        self._gates[key].saw_full()
                        if batches[key][0] is OnFull.discard_latest:
                            dropped[key] += 1
                        else:
                            todo.setdefault(key, []).append(m)
                        continue
                    if isinstance(err, TimeoutError) or (isinstance(err, PublishError)
                                                         and err.code == ERR_NO_RESPONDERS):
                        # No ack, or no stream leader at this moment (a cluster electing one after
                        # losing a node): the same msg id again later, so a retry cannot duplicate.
                        self._gates[key].unanswered(err)
                        todo.setdefault(key, []).append(m)
                        continue
                    raise err
                if stored:  # progress: poll quickly again; refused by a full buffer: keep backing off
                    waits = None
            if todo:
                # Full: wait for the reader to drain; the condition is re-checked each step.
                if waits is None:
                    waits = exponential(0.005, 2.0, self._max_wait_step)
                await asyncio.sleep(next(waits))
        return dropped
