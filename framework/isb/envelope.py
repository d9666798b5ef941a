"""The envelope of a buffer message: natsflow's headers around the user's payload, encoded by
writers and decoded by readers (docs/protocol.md §3), plus what a delivered message's JetStream
ack subject tells about it (stream sequence, store time, delivery count).

Header names:
  Nats-Msg-Id      the deduplication id (set by natsflow, see runtime/routing.py)
  Nf-Id            the data id, kept end to end by maps
  Nf-Event-Time    event time, integer epoch milliseconds
  Nf-Keys          the keys, a JSON array of strings (absent: no keys)
  Nf-Error, Nf-Error-Vertex   why and where a message was dead-lettered or sent to a fallback sink
  Nf-Request-Id, Nf-Request-Part   a serving request's id and part (framework/isb/requests.py):
                   not reserved, so maps pass them on like any user header of their input
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping

from nats.aio.msg import Msg

from framework.sdk import Datum
from framework.transport.headers import HeaderError, header_problem, unfold

# Sources log what they ignore of a foreign envelope under the name those lines always had.
log = logging.getLogger("natsflow.connectors")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_ID = "Nf-Id"
HDR_KEYS = "Nf-Keys"
HDR_EVENT_TIME = "Nf-Event-Time"
HDR_ERROR = "Nf-Error"
HDR_ERROR_VERTEX = "Nf-Error-Vertex"
HDR_ATTEMPTS = "Nf-Attempts"
HDR_REQUEST_ID = "Nf-Request-Id"
HDR_REQUEST_PART = "Nf-Request-Part"
RESERVED_HEADERS = frozenset({HDR_MSG_ID, HDR_ID, HDR_KEYS, HDR_EVENT_TIME})
# Headers of a pull consumer's status messages (not deliveries).
HDR_STATUS = "Status"
HDR_PENDING_MESSAGES = "Nats-Pending-Messages"
ERROR_MAX = 4000  # characters of Nf-Error kept


# ---- keys and event time ---------------------------------------------------------------------


def encode_keys(keys: Iterable[str] | None) -> str | None:
    """The `Nf-Keys` value of `keys`, None for no keys."""
    if not keys:
        return None
    keys = list(keys)
    if all(k.isascii() and k.isprintable() and '"' not in k and "\\" not in k for k in keys):
        return '["' + '","'.join(keys) + '"]'  # what json.dumps gives, at a third of its cost
    return json.dumps(keys, separators=(",", ":"))


def decode_keys(raw: str | None) -> list[str]:
    """The keys of an `Nf-Keys` value; ValueError when it is not a JSON array of strings."""
    if not raw:
        return []
    if raw[:2] == '["' and raw[-2:] == '"]' and "\\" not in raw and raw.isascii() and raw.isprintable():
        keys = raw[2:-2].split('","')  # encode_keys' own form, without json.loads' cost
        if not any('"' in k for k in keys):
            return keys
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{HDR_KEYS} is not a JSON array of strings: {raw[:200]!r} ({exc})") from None
    if not isinstance(parsed, list) or not all(isinstance(k, str) for k in parsed):
        raise ValueError(f"{HDR_KEYS} is not a JSON array of strings: {raw[:200]!r}")
    return parsed


# Epoch milliseconds a datetime can hold (years 1 to 9999): a handler reading Datum.event_time
# of anything else would fail on every attempt.
EVENT_TIME_RANGE = (-62_135_596_800_000, 253_402_300_799_999)


def decode_event_time(raw: str) -> int:
    """The epoch ms of an `Nf-Event-Time` value; ValueError when it is not one a datetime can hold."""
    try:
        ms = int(raw)
    except ValueError:
        raise ValueError(f"{HDR_EVENT_TIME} must be integer epoch milliseconds, got {raw[:200]!r}") from None
    if not EVENT_TIME_RANGE[0] <= ms <= EVENT_TIME_RANGE[1]:
        raise ValueError(f"{HDR_EVENT_TIME} {ms} is outside the years 1 to 9999")
    return ms


# ---- which headers travel --------------------------------------------------------------------


def is_control_header(name: str) -> bool:
    """`Nats-*` headers (any case) instruct the server on publish (`Nats-Expected-*`, `Nats-Rollup`,
    `Nats-TTL`, `Nats-Msg-Id`): copied from an input to an output they would make it fail or
    misbehave, so they are never passed on; natsflow sets `Nats-Msg-Id` itself."""
    return name[:5].lower() == "nats-"


def is_natsflow_header(name: str) -> bool:
    """A header natsflow or NATS owns (`Nats-*`, `Nf-*`): a source does not take it from outside."""
    return name.startswith(("Nats-", "Nf-"))


def is_natsflow_header_any_case(name: str) -> bool:
    """`is_natsflow_header` ignoring case (NATS header names are case-insensitive to the server:
    an upstream `nats-msg-id` would set the dedup id)."""
    return name[:5].lower() == "nats-" or name[:3].lower() == "nf-"


def passed_on(name: str) -> bool:
    """A header that travels from input to output (and from a handler's Message to the wire)."""
    return name not in RESERVED_HEADERS and not is_control_header(name)


# ---- encoding --------------------------------------------------------------------------------


def envelope_headers(
    msg_id: str, data_id: str, event_time_ms: int, keys: Iterable[str] | None = None,
    user_headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The envelope as a header dict (for a client that encodes headers itself)."""
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
    user_headers: Mapping[str, str] | None = None,
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


def record_headers(data_id: str, event_time_ms: int, keys: Iterable[str] | None,
                   user_headers: Mapping[str, str] | None) -> dict[str, str]:
    """A source record's envelope without its msg id (a dead letter gets its own)."""
    headers = {**(user_headers or {}), HDR_ID: data_id, HDR_EVENT_TIME: str(event_time_ms)}
    encoded = encode_keys(keys)
    if encoded:
        headers[HDR_KEYS] = encoded
    return headers


def error_headers(error: str, vertex: str) -> dict[str, str]:
    """`Nf-Error` (one line, cut to ERROR_MAX characters) and `Nf-Error-Vertex`."""
    return {HDR_ERROR: error[:ERROR_MAX].replace("\r", " ").replace("\n", " | "), HDR_ERROR_VERTEX: vertex}


def with_error(d: Datum, error: str, vertex: str) -> Datum:
    """`d` with the error headers a fallback sink receives."""
    headers = {**d.headers, **error_headers(error, vertex)}
    return Datum(d.keys, d.value, headers=headers, id=d.id, event_time_ms=d.event_time_ms)


# ---- decoding --------------------------------------------------------------------------------


def decode_datum(msg: Msg) -> Datum:
    """The Datum of a buffer message; ValueError for a message this vertex cannot take or pass
    on (docs/protocol.md §3): bad Nf-Keys or Nf-Event-Time, a user header that is not a token
    name with UTF-8 text. What is missing is taken from what a redelivery keeps: without
    Nf-Event-Time the event time is when JetStream stored it; without Nf-Id the data id is the
    `Nats-Msg-Id`, and without that too `seq:<stream sequence>` (never the reader's clock or a
    random id, which would change when the input is delivered again)."""
    h = msg.headers or {}
    et = h.get(HDR_EVENT_TIME)
    own = (HDR_MSG_ID in h) + (HDR_ID in h) + (et is not None) + (HDR_KEYS in h)
    user = _user_headers(h) if len(h) > own else None
    return Datum(
        decode_keys(h.get(HDR_KEYS)),
        msg.data,
        headers=user,
        id=h.get(HDR_ID) or h.get(HDR_MSG_ID) or f"seq:{stream_sequence(msg)}",
        event_time_ms=decode_event_time(et) if et else stream_timestamp_ms(msg),
    )


def _user_headers(h: dict[str, str]) -> dict[str, str]:
    user = {}
    for k, v in h.items():
        if passed_on(k):
            problem = header_problem(k, v)
            if problem is not None:
                raise ValueError(problem)
            user[k] = v
    return user


def decode_foreign(headers: dict[str, str] | None, where: str,
                   default_event_ms: int) -> tuple[list[str], int, dict[str, str]]:
    """(keys, event time, user headers) of a message from outside that may carry natsflow's
    envelope headers. Other `Nats-*`/`Nf-*` headers are dropped. A malformed envelope header is
    ignored with a warning naming `where`: the source stores the message rather than crash on
    it (and re-read it forever)."""
    h = headers or {}
    try:
        keys = decode_keys(h.get(HDR_KEYS))
    except ValueError as exc:
        log.warning("source message %s: ignored a bad %s header (%s)", where, HDR_KEYS, exc)
        keys = []
    et = h.get(HDR_EVENT_TIME)
    try:
        event_ms = int(et) if et else default_event_ms
    except ValueError:
        log.warning("source message %s: ignored a bad %s header %r", where, HDR_EVENT_TIME, et)
        event_ms = default_event_ms
    user = {k: v for k, v in h.items() if not is_natsflow_header(k)}
    return keys, event_ms, user


def msg_id(msg: Msg) -> str | None:
    """The `Nats-Msg-Id` a message was published with, if any."""
    headers = msg.headers
    return headers.get(HDR_MSG_ID) if headers else None


# ---- delivery metadata (from the JetStream ack subject) --------------------------------------
# `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`: v1 ack subjects have 9
# tokens; v2 ones put domain and account hash before the stream.


def delivery_count(msg: Msg) -> int:
    """How many times JetStream has delivered this message (1 = first delivery)."""
    parts = msg.reply.split(".")
    return int(parts[4] if len(parts) == 9 else parts[6])


def stream_sequence(msg: Msg) -> int:
    """The stream sequence of a delivered message."""
    parts = msg.reply.split(".")
    return int(parts[5] if len(parts) == 9 else parts[7])


def stream_timestamp_ms(msg: Msg) -> int:
    """When JetStream stored the message (epoch ms): the same on every redelivery, unlike the
    reader's clock."""
    parts = msg.reply.split(".")
    return int(parts[7] if len(parts) == 9 else parts[9]) // 1_000_000


def origin(msg: Msg) -> str:
    """A stable name of one input message, from which its outputs' ids are derived: the first 24
    hex digits of SHA-256 over its `Nats-Msg-Id`. That id is unique in its buffer (it is the dedup
    key) and the same when the writer stores the message again, which is what ids must survive: a
    nats-server crash loses the dedup table, an upstream retry stores a second copy under a new
    stream sequence, and both copies must produce the same output ids. Hashed, so ids stay short
    along chains and cycles. A message without one (written by hand) falls back to its sequence."""
    headers = msg.headers
    mid = headers.get(HDR_MSG_ID) if headers else None
    # surrogatepass: a Nats-Msg-Id that is not UTF-8 (kept as lone surrogates by the header
    # parser) still names its message, so even such a message can be dead-lettered.
    return hashlib.sha256((mid or f"seq:{stream_sequence(msg)}").encode("utf-8", "surrogatepass")).hexdigest()[:24]
