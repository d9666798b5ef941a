"""The inter-step buffer: one JetStream stream per reading vertex, shared by all its replicas.

Names (documented in docs/protocol.md):
  stream and durable consumer  nf_<pipeline>_<vertex>
  subjects                     nf.<pipeline>.<vertex>.<from-vertex>
  dead-letter stream           nf_<pipeline>_<vertex>_dlq   (subject nfdlq.<pipeline>.<vertex>)

`_` cannot appear in vertex names, so no two vertices can produce the same stream name.
The hot path talks the JetStream wire protocol directly (pull requests on one inbox, publishes
with a reply inbox per writer) because nats-py's fetch()/publish() cost a timer and a future
wrapper per message; see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api
from nats.js.errors import NotFoundError

from framework.transport.connection import HeaderError, encode_headers, header_problem, unfold, publish_many, reply_all, subscribe_fast
from framework.isb.reconcile import (REPLICAS_CURRENT_TIMEOUT_S, SpecPaths, apply_buffers, ensure_stream, patiently,
                            replicas_current, rescaled)
from framework.spec import OnFull, Pipeline
from framework.sideinputs import manager as sideinputs
from framework.watermark.marks import bucket_name, provision_bucket

log = logging.getLogger("natsflow.buffer")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_ID = "Nf-Id"
HDR_KEYS = "Nf-Keys"
HDR_EVENT_TIME = "Nf-Event-Time"
HDR_ERROR = "Nf-Error"
HDR_ERROR_VERTEX = "Nf-Error-Vertex"
HDR_ATTEMPTS = "Nf-Attempts"
RESERVED_HEADERS = frozenset({HDR_MSG_ID, HDR_ID, HDR_KEYS, HDR_EVENT_TIME})

# JetStream acknowledgement tokens, sent to a delivered message's reply subject.
ACK, NAK, ACK_IN_PROGRESS = b"+ACK", b"-NAK", b"+WPI"

DUPLICATE_WINDOW_S = 120.0
DLQ_MAX_MSGS = 1_000_000
# JSStreamStoreFailedF with discard=new: "maximum messages exceeded" (bufferMaxLength) and, in
# nats-server 2.15 on one server or a cluster, "maximum bytes exceeded" (spec.buffers.maxBytes).
ERR_STREAM_FULL = 10077
# No stream answered: not provisioned, or (in a cluster) the stream is electing a new leader.
ERR_NO_RESPONDERS = 503


def _part(partition: int | None) -> str:
    return "" if partition is None else f"_p{partition}"


def stream_name(pipeline: str, vertex: str, partition: int | None = None) -> str:
    """A partitioned (keyed reduce) vertex has one buffer per partition: nf_<p>_<v>_p<i>."""
    return f"nf_{pipeline}_{vertex}{_part(partition)}"


def consumer_name(pipeline: str, vertex: str, partition: int | None = None) -> str:
    return stream_name(pipeline, vertex, partition)


def edge_subject(pipeline: str, to_vertex: str, from_vertex: str, partition: int | None = None) -> str:
    return f"nf.{pipeline}.{to_vertex}{_part(partition)}.{from_vertex}"


def partitions(p: Pipeline, vertex: str) -> list[int | None]:
    """Partition indexes of a vertex's buffer: [None] unless it is a reduce with partitions > 1."""
    v = p.vertex(vertex)
    n = v.udf.reduce.partitions if v.udf is not None and v.udf.reduce is not None else 1
    return [None] if n == 1 else list(range(n))


def dlq_stream_name(pipeline: str, vertex: str) -> str:
    return f"nf_{pipeline}_{vertex}_dlq"


def dlq_subject(pipeline: str, vertex: str) -> str:
    return f"nfdlq.{pipeline}.{vertex}"


# ---- provisioning ----------------------------------------------------------------------------


def buffer_stream_config(p: Pipeline, vertex: str, partition: int | None = None) -> api.StreamConfig:
    limits = p.limits_for(vertex)
    return apply_buffers(api.StreamConfig(
        name=stream_name(p.name, vertex, partition),
        subjects=[f"nf.{p.name}.{vertex}{_part(partition)}.*"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.NEW,
        max_msgs=limits.buffer_max_length,
        duplicate_window=DUPLICATE_WINDOW_S,
        description=f"natsflow buffer of vertex {vertex} in pipeline {p.name}",
    ), p.buffers_for(vertex))


def buffer_consumer_config(p: Pipeline, vertex: str, partition: int | None = None) -> api.ConsumerConfig:
    limits = p.limits_for(vertex)
    replicas = max(1, p.vertex(vertex).scale.max)
    v = p.vertex(vertex)
    # A reduce holds every input of its open windows unacked until they are emitted.
    held = limits.buffer_max_length if v.udf is not None and v.udf.reduce is not None else 0
    return api.ConsumerConfig(
        durable_name=consumer_name(p.name, vertex, partition),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=limits.ack_wait,
        max_ack_pending=max(1000, 4 * limits.read_batch_size * replicas, held),
        max_waiting=512,
        description=f"natsflow reader of vertex {vertex}",
    )


def dlq_stream_config(p: Pipeline, vertex: str) -> api.StreamConfig:
    return apply_buffers(api.StreamConfig(
        name=dlq_stream_name(p.name, vertex),
        subjects=[dlq_subject(p.name, vertex)],
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_msgs=DLQ_MAX_MSGS,
        duplicate_window=DUPLICATE_WINDOW_S,
        description=f"natsflow dead letters of vertex {vertex} in pipeline {p.name}",
    ), p.buffers_for(vertex))


def spec_paths(p: Pipeline, vertex: str | None) -> SpecPaths:
    """Which spec fields set the replicas and storage of a vertex's streams (None: the buckets')."""
    return SpecPaths(p.buffers_field(vertex, "replicas"), p.buffers_field(vertex, "storage"))


async def ensure_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig) -> str:
    what = f"consumer {stream}/{config.durable_name}"
    try:
        info = await patiently(js.consumer_info, stream, config.durable_name, what=what)
    except NotFoundError:
        await patiently(js.add_consumer, stream, config, what=what)
        return "created"
    current = info.config
    fields = ("ack_wait", "max_ack_pending", "description")
    if all(getattr(current, f) == getattr(config, f) for f in fields):
        return "unchanged"
    # CONSUMER.CREATE with the same name updates the editable fields
    await patiently(js.add_consumer, stream, config, what=what)
    return "updated"


async def provision(js: JetStreamContext, p: Pipeline,
                    progress: Callable[[str, str], None] | None = None) -> list[tuple[str, str]]:
    """Create or update every buffer, consumer, dead-letter stream (one per vertex) and KV bucket
    with the spec's limits and `buffers` settings; idempotent. `progress` is called with (what,
    result) as each one is done (the CLI prints it). Raises `ProvisionError` for settings the
    servers refuse."""
    done: list[tuple[str, str]] = []
    moved: list[str] = []  # JetStream streams whose replicas changed

    def record(what: str, result: str, stream: str | None = None) -> None:
        done.append((what, result))
        if stream is not None and rescaled(result):
            moved.append(stream)
        if progress is not None:
            progress(what, result)

    for v in p.reading_vertices():
        paths = spec_paths(p, v.name)
        for part in partitions(p, v.name):
            cfg = buffer_stream_config(p, v.name, part)
            record(f"stream {cfg.name}", await ensure_stream(js, cfg, paths), cfg.name)
            ccfg = buffer_consumer_config(p, v.name, part)
            record(f"consumer {cfg.name}/{ccfg.durable_name}", await ensure_consumer(js, cfg.name, ccfg))
    for v in p.spec.vertices:  # sources too: records they cannot store are dead-lettered
        dcfg = dlq_stream_config(p, v.name)
        record(f"stream {dcfg.name}", await ensure_stream(js, dcfg, spec_paths(p, v.name)), dcfg.name)
    shared = p.buffers_for(None)  # KV buckets: the pipeline-wide replicas and storage
    buckets = [(bucket_name(p.name), provision_bucket)]
    if any(v.udf is not None and v.udf.reduce is not None for v in p.spec.vertices):
        from framework.runtime import ownership  # noqa: PLC0415 - ownership builds on this module

        buckets.append((ownership.bucket_name(p.name), ownership.provision_bucket))
    if p.spec.side_inputs:
        buckets.append((sideinputs.bucket_name(p.name), sideinputs.provision_bucket))
    for bucket, ensure in buckets:
        record(f"kv {bucket}", await ensure(js, p.name, shared, update=True), f"KV_{bucket}")
    for stream in await replicas_current(js, moved):
        log.warning("stream %s: new replicas not current after %.0fs; it may refuse writes until they are",
                    stream, REPLICAS_CURRENT_TIMEOUT_S)
        if progress is not None:
            progress(f"stream {stream}", f"replicas not current after {REPLICAS_CURRENT_TIMEOUT_S:g}s")
    return done


# ---- envelope --------------------------------------------------------------------------------


def encode_keys(keys: Iterable[str] | None) -> str | None:
    if not keys:
        return None
    keys = list(keys)
    if all(k.isascii() and k.isprintable() and '"' not in k and "\\" not in k for k in keys):
        return '["' + '","'.join(keys) + '"]'  # what json.dumps gives, at a third of its cost
    return json.dumps(keys, separators=(",", ":"))


def decode_keys(raw: str | None) -> list[str]:
    if not raw:
        return []
    if raw[:2] == '["' and raw[-2:] == '"]' and "\\" not in raw and raw.isascii() and raw.isprintable():
        keys = raw[2:-2].split('","')  # encode_keys' own form, without json.loads' cost
        if not any('"' in k for k in keys):
            return keys
    try:
        keys = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{HDR_KEYS} is not a JSON array of strings: {raw[:200]!r} ({exc})") from None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError(f"{HDR_KEYS} is not a JSON array of strings: {raw[:200]!r}")
    return keys


# Epoch milliseconds a datetime can hold (years 1 to 9999): a handler reading Datum.event_time
# of anything else would fail on every attempt.
EVENT_TIME_RANGE = (-62_135_596_800_000, 253_402_300_799_999)


def decode_event_time(raw: str) -> int:
    try:
        ms = int(raw)
    except ValueError:
        raise ValueError(f"{HDR_EVENT_TIME} must be integer epoch milliseconds, got {raw[:200]!r}") from None
    if not EVENT_TIME_RANGE[0] <= ms <= EVENT_TIME_RANGE[1]:
        raise ValueError(f"{HDR_EVENT_TIME} {ms} is outside the years 1 to 9999")
    return ms


def is_control_header(name: str) -> bool:
    """`Nats-*` headers (any case) instruct the server on publish (`Nats-Expected-*`, `Nats-Rollup`,
    `Nats-TTL`, `Nats-Msg-Id`): copied from an input to an output they would make it fail or
    misbehave, so they are never passed on; natsflow sets `Nats-Msg-Id` itself."""
    return name[:5].lower() == "nats-"


def passed_on(name: str) -> bool:
    """A header that travels from input to output (and from a handler's Message to the wire)."""
    return name not in RESERVED_HEADERS and not is_control_header(name)


def envelope_headers(
    msg_id: str, data_id: str, event_time_ms: int, keys: Iterable[str] | None = None,
    user_headers: dict[str, str] | None = None,
) -> dict[str, str]:
    headers = {k: v for k, v in user_headers.items() if passed_on(k)} if user_headers else {}
    headers[HDR_MSG_ID] = msg_id
    headers[HDR_ID] = data_id
    headers[HDR_EVENT_TIME] = str(event_time_ms)
    encoded = encode_keys(keys)
    if encoded:
        headers[HDR_KEYS] = encoded
    return headers


def encode_envelope(
    msg_id: str, data_id: str, event_time_ms: int, keys: Iterable[str] | None = None,
    user_headers: dict[str, str] | None = None,
) -> bytes:
    """The same headers as `envelope_headers`, already in wire form: the hot path skips building
    a dict and re-validating natsflow's own header names for every message."""
    head = f"NATS/1.0\r\n{HDR_MSG_ID}: {unfold(msg_id)}\r\n{HDR_ID}: {unfold(data_id)}\r\n" \
           f"{HDR_EVENT_TIME}: {event_time_ms}\r\n"
    encoded = encode_keys(keys)
    if encoded:
        head += f"{HDR_KEYS}: {unfold(encoded)}\r\n"
    if user_headers:
        for k, v in user_headers.items():
            if passed_on(k):
                problem = header_problem(k, v)
                if problem is not None:
                    raise HeaderError(problem)
                head += f"{k}: {unfold(v)}\r\n"
    return (head + "\r\n").encode()


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1 = first delivery)."""
    parts = msg.reply.split(".")
    return int(parts[4] if len(parts) == 9 else parts[6])


def origin(msg: Msg) -> str:
    """A stable name of one input message, from which its outputs' ids are derived: the first 24
    hex digits of SHA-256 over its `Nats-Msg-Id`. That id is unique in its buffer (it is the dedup
    key) and the same when the writer stores the message again, which is what ids must survive: a
    nats-server crash loses the dedup table, an upstream retry stores a second copy under a new
    stream sequence, and both copies must produce the same output ids. Hashed, so ids stay short
    along chains and cycles. A message without one (written by hand) falls back to its sequence."""
    headers = msg.headers
    msg_id = headers.get(HDR_MSG_ID) if headers else None
    # surrogatepass: a Nats-Msg-Id that is not UTF-8 (kept as lone surrogates by the header
    # parser) still names its message, so even such a message can be dead-lettered.
    return hashlib.sha256((msg_id or f"seq:{stream_sequence(msg)}").encode("utf-8", "surrogatepass")).hexdigest()[:24]


def stream_timestamp_ms(msg: Msg) -> int:
    """When JetStream stored the message (epoch ms), from its ack subject: the same on every
    redelivery, unlike the reader's clock."""
    parts = msg.reply.split(".")
    return int(parts[7] if len(parts) == 9 else parts[9]) // 1_000_000


def stream_sequence(msg: Msg) -> int:
    """The stream sequence from a JetStream ack subject `$JS.ACK.<stream>.<consumer>.<n>.<sseq>...`."""
    parts = msg.reply.split(".")
    # v1 ack subjects have 9 tokens; v2 ones put domain and account hash before the stream.
    return int(parts[5] if len(parts) == 9 else parts[7])


# ---- reading ---------------------------------------------------------------------------------


class BufferReader:
    """Pulls from a durable consumer with pull requests kept in flight, so the next batch is
    already arriving while the current one is processed. Holds at most 2 × batch_size messages
    fetched ahead, plus whatever the caller has not acked or nak'd yet.

    Every message it delivers stays *held* until the caller passes it to `ack` or `nak`: while
    held — handed out or still waiting in the read-ahead — it is kept in progress (`+WPI` every
    ack_wait / 3), so however long a UDF or a sink stalls, JetStream never redelivers it to
    another replica and nothing is processed twice without a crash.

    `may_send`, when given, is asked before anything goes to the consumer (a pull request, an ack,
    a nak, an in-progress): while it answers False the reader sends nothing. A reduce partition's
    lease uses it to fence a replica that can no longer prove it owns the partition.
    """

    def __init__(self, nc: Client, stream: str, consumer: str, batch_size: int, expires: float = 5.0,
                 ack_wait: float = 30.0, may_send: Callable[[], bool] | None = None):
        self._nc = nc
        self._may_send = may_send
        self._batch = batch_size
        self._expires = expires
        self._ack_wait = ack_wait
        self.stream, self.consumer = stream, consumer
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._inbox = nc.new_inbox()
        self._buf: collections.deque[Msg] = collections.deque()
        # stream sequence -> its newest delivery, until acked or nak'd (a redelivery of a held
        # message replaces the older delivery rather than being held twice)
        self._held: dict[int, Msg] = {}
        self._credit = 0  # messages requested and not yet delivered or expired
        self._arrived = asyncio.Event()
        self._last_response = time.monotonic()
        self._reconnects = nc.stats["reconnects"]
        self._sub = None
        self._keep_alive: asyncio.Task | None = None
        self._closed = False

    async def start(self) -> None:
        self._sub = await subscribe_fast(self._nc, self._inbox, self._on_msg)
        self._keep_alive = asyncio.create_task(self._beat(), name=f"in-progress-{self.stream}")

    @property
    def held(self) -> int:
        """Messages delivered to this reader and not yet acked or nak'd."""
        return len(self._held)

    def _on_msg(self, msg: Msg) -> None:
        self._last_response = time.monotonic()
        if msg.reply:
            self._credit -= 1
            self._buf.append(msg)
            self._held[stream_sequence(msg)] = msg
            self._arrived.set()
            return
        hdrs = msg.headers or {}
        status = hdrs.get("Status")
        if status in ("408", "404", "409"):
            left = hdrs.get("Nats-Pending-Messages")
            if left is not None:
                self._credit -= int(left)
            else:
                self._credit = 0  # request gone without an account of its credit: pull afresh
            self._credit = max(self._credit, 0)
            self._arrived.set()
        # 100 = idle heartbeat; nothing to do

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            if self._held:
                try:
                    await self._reply(list(self._held.values()), ACK_IN_PROGRESS)
                except (nats_errors.Error, asyncio.TimeoutError) as exc:
                    # Reconnecting: the next beat tries again (a beat is a third of the ack wait).
                    log.warning("in-progress beat for %d held messages of %s failed: %s",
                                len(self._held), self.stream, exc)

    async def _top_up(self) -> None:
        if self._closed or (self._may_send is not None and not self._may_send()):
            return
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects:
            # Our pull requests lived on the old connection's server side: pull afresh at once
            # rather than after they would have expired.
            self._reconnects = reconnects
            self._credit = 0
        elif self._credit > 0 and time.monotonic() - self._last_response > 2 * self._expires + 1:
            # The server answered nothing for longer than a request lives: forget the credit
            # and pull again.
            self._credit = 0
        want = 2 * self._batch - len(self._buf) - self._credit
        if want >= self._batch // 2 or (want > 0 and self._credit == 0):
            req = json.dumps({"batch": want, "expires": int(self._expires * 1e9)}).encode()
            if self._credit == 0:
                self._last_response = time.monotonic()  # staleness counts from this request
            self._credit += want
            await self._nc.publish(self._next_subject, req, reply=self._inbox)

    async def fetch(self, timeout: float) -> list[Msg]:
        """Up to batch_size messages; waits at most `timeout` for the first one."""
        await self._top_up()
        if not self._buf:
            deadline = time.monotonic() + timeout
            while not self._buf and not self._closed:
                self._arrived.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
                await self._top_up()
        n = min(self._batch, len(self._buf))
        out = [self._buf.popleft() for _ in range(n)]
        await self._top_up()
        return out

    async def ack(self, msgs: list[Msg]) -> None:
        """Done with these: JetStream removes them from the work-queue buffer."""
        self._release(msgs)
        await self._reply(msgs, ACK)

    async def nak(self, msgs: list[Msg]) -> None:
        """Hand these back for immediate redelivery (to any replica). They are released before
        the token is sent: if it cannot be sent (connection lost), the ack wait still ends and
        JetStream redelivers them; the deterministic msg ids drop what was already written."""
        self._release(msgs)
        await self._reply(msgs, NAK)

    def _release(self, msgs: list[Msg]) -> None:
        held = self._held
        for m in msgs:
            held.pop(stream_sequence(m), None)

    async def _reply(self, msgs: list[Msg], token: bytes) -> None:
        if self._may_send is not None and not self._may_send():
            return
        await reply_all(self._nc, msgs, token)

    def interrupt(self) -> None:
        """Wake a waiting fetch() so a stopping worker does not wait out the read timeout."""
        self._closed = True
        self._arrived.set()

    async def close(self) -> None:
        """Stop pulling and hand back what was fetched ahead and never handed out. Messages the
        caller still holds stay its to ack or nak; they are no longer kept in progress."""
        self._closed = True
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        unread = list(self._buf)
        self._buf.clear()
        await self.nak(unread)


# ---- writing ---------------------------------------------------------------------------------


@dataclass(slots=True)
class OutMessage:
    subject: str
    payload: bytes
    headers: dict[str, str] | bytes  # bytes: already encoded (see encode_envelope)


class PublishError(Exception):
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
        self._sub = None
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
        for attempt in range(3):
            if not todo:
                break
            loop = asyncio.get_running_loop()
            waits: list[tuple[int, asyncio.Future]] = []
            batch = []
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
            last_ack: dict[str, bytes] = {}
            for i, fut in waits:
                if fut in pending:
                    fut.cancel()
                    todo.append(i)
                    results[i] = TimeoutError("no publish ack within %.1fs" % self._timeout)
                    continue
                results[i] = _puback_error(fut.result())
                if results[i] is None:
                    last_ack[msgs[i].subject] = fut.result()
            for subject, data in last_ack.items():  # one JSON parse per subject and batch
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
            except (nats_errors.Error, asyncio.TimeoutError) as exc:
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
        wait = 0.005
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
                    wait = 0.005
            if todo:
                # Full: wait for the reader to drain; the condition is re-checked each step.
                await asyncio.sleep(wait)
                wait = min(wait * 2, self._max_wait_step)
        return dropped
