"""Dead letters: a message natsflow cannot process, written with why, in a form the dead-letter
stream always accepts. A dead-letter write must never fail for the reason the message is there:
header names that are not tokens are renamed, values that are not UTF-8 escaped, `Nats-*`
control headers dropped, and a payload too large for the server truncated; each change is said
in `Nf-Error` after `; dead letter: `."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from nats import errors as nats_errors
from nats.aio.msg import Msg
from opentelemetry.trace import Span

from framework.connector import SourceRecord
from framework.isb import names
from framework.isb.envelope import (
    ERROR_MAX,
    HDR_ERROR,
    HDR_ERROR_VERTEX,
    HDR_MSG_ID,
    HDR_REQUEST_ID,
    RESERVED_HEADERS,
    is_control_header,
    origin,
    record_headers,
)
from framework.isb.ports import Publishes
from framework.isb.requests import RequestLedger
from framework.isb.writer import OutMessage
from framework.observability.metrics import VertexMetrics
from framework.observability.tracing import VertexTracer
from framework.runtime.retry import steady
from framework.transport.headers import (
    encode_headers,
    escape_header_name,
    escape_header_value,
    header_problem,
)

log = logging.getLogger("natsflow.worker")  # the name these lines had when the worker wrote them


def one_line(text: str) -> str:
    """Error text as one header line of UTF-8."""
    return escape_header_value(text[:ERROR_MAX].replace("\r", " ").replace("\n", " | "))


def _kept_headers(headers: Mapping[str, str], notes: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers.items():
        if k in (HDR_MSG_ID, HDR_ERROR, HDR_ERROR_VERTEX):
            continue  # set by the dead letter itself
        if is_control_header(k):
            notes.append(f"control header {k!r} dropped")
            continue
        name = k
        if header_problem(k, "") is not None:
            name = escape_header_name(k)
            while name in out or name in headers:
                name += "_"
            notes.append(f"header {k!r} renamed {name!r}")
        value = v if isinstance(v, str) else str(v)
        if header_problem(name, value) is not None:
            value = escape_header_value(value)
            notes.append(f"value of header {k!r} escaped")
        out[name] = value
    return out


def dead_letter_message(subject: str, msg_id: str, payload: bytes, headers: Mapping[str, str] | None,
                        error: str, vertex: str, max_payload: int) -> OutMessage:
    """The message for `subject` (a vertex's dead-letter subject): `payload` and `headers` as they
    came, `Nats-Msg-Id: msg_id`, `Nf-Error: error`, `Nf-Error-Vertex: vertex`, fitted to
    `max_payload` (the server's limit, headers included)."""
    notes: list[str] = []
    kept = _kept_headers(headers or {}, notes)

    def encode(extra_notes: list[str], user: dict[str, str]) -> bytes:
        all_notes = notes + extra_notes
        text = error + ("; dead letter: " + ", ".join(all_notes) if all_notes else "")
        return encode_headers({**user, HDR_MSG_ID: one_line(msg_id), HDR_ERROR: one_line(text),
                               HDR_ERROR_VERTEX: vertex})

    head = encode([], kept)
    if len(head) + len(payload) <= max_payload:
        return OutMessage(subject, payload, head)
    envelope = {k: v for k, v in kept.items() if k in RESERVED_HEADERS}
    for user in (kept, envelope):  # the headers alone may not fit: keep natsflow's envelope only
        dropped = [] if user is kept else [f"{len(kept) - len(envelope)} user headers dropped"]
        # The note's own length counts: size it with the longest number it can hold.
        probe = encode(dropped + [f"payload truncated from {len(payload)} to {len(payload)} bytes"], user)
        room = max_payload - len(probe)
        if room >= 0:
            head = encode(dropped + [f"payload truncated from {len(payload)} to {room} bytes"], user)
            return OutMessage(subject, payload[:room], head)
    head = encode(["headers and payload dropped"], {})
    return OutMessage(subject, b"", head)


class DeadLetters:
    """Writes one vertex's dead letters: inputs it cannot process, records a source cannot store.
    Each is published until stored (the DLQ is provisioned with the buffers), then counted."""

    def __init__(self, publisher: Publishes, metrics: VertexMetrics, pipeline: str, vertex: str,
                 stopping: asyncio.Event):
        self._publisher = publisher
        self._metrics = metrics
        self._vertex = vertex
        self._stopping = stopping
        self.subject = names.dlq_subject(pipeline, vertex)
        self.stream = names.dlq_stream_name(pipeline, vertex)
        self.requests: RequestLedger | None = None  # a serving pipeline: requests learn their errors

    async def inputs(self, failed: list[tuple[Msg, str]], spans: dict[int, Span] | None = None) -> None:
        """Each input as it came with its error; its span, if traced, fails with it."""
        if not failed:
            return
        out = []
        for m, error in failed:
            VertexTracer.fail(spans, m, error)
            msg_id = names.dlq_msg_id(self._vertex, origin(m))
            out.append(dead_letter_message(self.subject, msg_id, m.data, m.headers, error, self._vertex,
                                           self._publisher.max_payload))
        await self._publish(out, failed[0][1])
        if self.requests is not None:  # after the dead letter is stored: the request then ends with the error
            await self.requests.errors([(m.headers, error) for m, error in failed
                                        if m.headers and HDR_REQUEST_ID in m.headers], self._vertex)

    async def records(self, bad: list[tuple[SourceRecord, str]]) -> None:
        """Each record as it came (the payload cut to what fits), with `Nf-Error`; `Nats-Msg-Id`
        `dlq:<vertex>:<offset>`, so a record re-read after a crash is dead-lettered once."""
        out = []
        for r, problem in bad:
            headers = record_headers(r.id or r.offset, r.event_time_ms, r.keys, r.headers)
            out.append(dead_letter_message(self.subject, names.dlq_msg_id(self._vertex, r.offset), r.value, headers,
                                           f"UnstorableRecord: {problem}", self._vertex, self._publisher.max_payload))
        await self._publish(out, bad[0][1])

    async def _publish(self, out: list[OutMessage], first_error: str) -> None:
        total = len(out)
        delays = steady(0.5)
        while True:
            errors = await self._publisher.publish(out)
            retry = [o for o, e in zip(out, errors) if e is not None]
            if not retry:
                break
            first = next(e for e in errors if e)
            if self._stopping.is_set():
                # Leave the batch unacked: it is redelivered to a replica that can reach the DLQ.
                raise nats_errors.Error(f"dead-letter publish failed while stopping: {first}")
            log.warning("dead-letter publish failed for %d messages (%s); retrying", len(retry), first)
            out = retry
            await asyncio.sleep(next(delays))
        self._metrics.dlq.inc(total)
        log.warning("vertex %s: %d message(s) sent to dead-letter stream %s; first error: %s",
                    self._vertex, total, self.stream, first_error)
