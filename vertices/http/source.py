"""`http`: `POST /vertices/<name>` stores the body in the first buffer and only then answers 2xx.

Headers: `X-Natsflow-Keys` (comma-separated), `X-Natsflow-Event-Time` (epoch ms), `X-Natsflow-Id`
(dedup id: a retried POST with the same id is stored once), W3C `traceparent`/`tracestate` (the
message joins the client's trace). Answers 400 for bad input (including header bytes that are not
UTF-8), 401 for a missing/wrong bearer token, 413 over the body limit (or when body and headers
would not fit the server's max_payload), 503 while the buffer is full. `GET /livez` and
`GET /readyz` answer 200.

The body limit is checked against the NATS server's `max_payload` at start: a message's headers
and payload together must fit in it (the server closes a connection that sends more), so the
default limit is `max_payload - ENVELOPE_RESERVE`, and a configured `maxBodySize` above that is
an error at start.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from framework.connector import (
    BufferFull,
    ConnectorConfigError,
    ConnectorContext,
    Emit,
    RecordRejected,
    SourceRecord,
    encode_envelope,
    source_msg_id,
)
from framework.observability.http import BodyTooLarge, json_response, read_body, serve_until
from framework.observability.http import server as http_server
from vertices.http.config import HttpAuth
from vertices.http.config import HttpSourceConfig as Config

log = logging.getLogger("natsflow.http")

# Room kept in the server's max_payload for natsflow's headers on this message and on the ones a
# map derives from it downstream: ids (up to 256 characters each), event time, keys, trace context.
ENVELOPE_RESERVE = 8 * 1024
# A span this source starts when tracing is on adds a traceparent the request may not have had.
TRACE_HEADER_ROOM = 128

KEYS, EVENT_TIME, DATA_ID = "X-Natsflow-Keys", "X-Natsflow-Event-Time", "X-Natsflow-Id"
TRACE_HEADERS = ("traceparent", "tracestate")
_EPOCH_MS = re.compile(r"-?[0-9]{1,18}")


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


def body_limit(cfg: Config, max_payload: int) -> int:
    """The largest body this source accepts on a server with `max_payload`: `maxBodySize`, or by
    default everything the server takes beside ENVELOPE_RESERVE bytes of headers."""
    room = max_payload - ENVELOPE_RESERVE
    if cfg.max_body_size is None:
        if room < 1:
            raise ConnectorConfigError("maxBodySize", f"the NATS server's max_payload of {max_payload} bytes leaves "
                                       f"no room beside the {ENVELOPE_RESERVE} bytes natsflow keeps for headers")
        return room
    if cfg.max_body_size > room:
        raise ConnectorConfigError(
            "maxBodySize", f"{cfg.max_body_size} bytes do not fit the NATS server's max_payload of {max_payload} "
                           f"bytes with the {ENVELOPE_RESERVE} bytes natsflow keeps for headers: set at most {room}, "
                           "leave it unset, or raise max_payload on the server")
    return cfg.max_body_size


class RequestHeaders:
    """A request's headers by lower-case name. Bytes arrive as sent (HTTP allows any octet in a
    value), so a header natsflow reads is checked here: not UTF-8 is a 400 naming the header."""

    def __init__(self, raw: list[tuple[bytes, bytes]]):
        self.raw = {k.decode("latin-1").lower(): v for k, v in raw}

    def text(self, name: str) -> str | None:
        value = self.raw.get(name.lower())
        if value is None:
            return None
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise HttpError(400, f"header {name} is not valid UTF-8") from None

    def ascii(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not value.isascii():
            raise HttpError(400, f"header {name} must be ASCII")
        return value


def trace_headers(headers: RequestHeaders) -> dict[str, str] | None:
    """A client's W3C trace context travels with the message (the source's span, when tracing is
    on, becomes its child; when off, the context passes through unchanged)."""
    found = {name: headers.ascii(name) for name in TRACE_HEADERS}
    if found["traceparent"] is None:
        return None
    return {k: v for k, v in found.items() if v is not None}


def authorize(auth: HttpAuth | None, headers: RequestHeaders) -> None:
    """401 unless the request carries `Authorization: Bearer <auth.token>` (compared in constant
    time); no check when `auth` is None. Shared by the http and serving sources."""
    if auth is None:
        return
    supplied = headers.raw.get("authorization", b"")
    if not hmac.compare_digest(supplied, f"Bearer {auth.token}".encode()):
        raise HttpError(401, "missing or wrong bearer token")


class HttpSource:
    def __init__(self, config: Config):
        self.cfg = config
        self.max_body = config.max_body_size or 0  # set from the server's max_payload in run()
        self.max_payload = 0

    def authorize(self, headers: RequestHeaders) -> None:
        authorize(self.cfg.auth, headers)

    def record(self, headers: RequestHeaders, body: bytes) -> SourceRecord:
        raw_et = headers.text(EVENT_TIME)
        if raw_et is None:
            event_ms = int(time.time() * 1000)
        elif _EPOCH_MS.fullmatch(raw_et.strip()):
            event_ms = int(raw_et)
        else:
            raise HttpError(400, f"{EVENT_TIME} must be epoch milliseconds, got {raw_et[:100]!r}")
        raw_keys = headers.text(KEYS)
        keys = [k.strip() for k in raw_keys.split(",") if k.strip()] if raw_keys else None
        data_id = headers.text(DATA_ID) or uuid.uuid4().hex
        if len(data_id) > 256 or not data_id.isprintable():
            raise HttpError(400, f"{DATA_ID} must be at most 256 printable characters")
        return SourceRecord(body, data_id, event_ms, keys, trace_headers(headers), data_id)

    def check_fits(self, vertex: str, record: SourceRecord) -> None:
        """Body and envelope must fit the server's max_payload (keys can make the envelope large).
        `try_emit` would refuse such a record too, but without room for the traceparent a span
        adds later; this answers 413 with that room counted."""
        envelope = encode_envelope(source_msg_id(vertex, record.offset), record.id, record.event_time_ms,
                                   record.keys, record.headers)
        size = len(record.value) + len(envelope) + TRACE_HEADER_ROOM
        if size > self.max_payload:
            raise HttpError(413, f"body and headers ({size} bytes) exceed the NATS server's max_payload of "
                                 f"{self.max_payload} bytes")

    def app(self, vertex: str, try_emit: Emit) -> Starlette:
        route = f"/vertices/{vertex}"

        async def health(_: Request) -> Response:
            return json_response(200, {"status": "ok"})

        async def post(request: Request) -> Response:
            headers = RequestHeaders(request.headers.raw)
            try:
                self.authorize(headers)  # before reading a body nobody may send
                headers.ascii("content-length")
                body = await read_body(request, self.max_body)
                record = self.record(headers, body)
                self.check_fits(vertex, record)
                await try_emit([record])
            except BodyTooLarge as exc:
                return json_response(413, {"error": str(exc)})
            except HttpError as exc:
                return json_response(exc.status, {"error": exc.reason})
            except RecordRejected as exc:  # the size was checked above: a header the server cannot carry
                return json_response(400, {"error": str(exc)})
            except BufferFull as exc:
                return json_response(503, {"error": str(exc), "retry": True})
            return json_response(200, {"id": record.id})

        async def not_found(_: Request, __: Exception) -> Response:
            return json_response(404, {"error": f"no such path; POST to {route}"})

        async def wrong_method(request: Request, exc: Exception) -> Response:
            if request.url.path != route:  # GET-only health paths: another method is no such path
                return await not_found(request, exc)
            return json_response(405, {"error": "use POST"})

        return Starlette(routes=[Route("/livez", health), Route("/readyz", health),
                                 Route(route, post, methods=["POST"])],
                         exception_handlers={404: not_found, 405: wrong_method})

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        self.max_payload = ctx.nc.max_payload
        self.max_body = body_limit(self.cfg, self.max_payload)
        # The worker owns SIGTERM/SIGINT: it sets ctx.stopping, then in-flight requests finish.
        server = http_server(self.app(ctx.vertex, try_emit), self.cfg.host, self.cfg.port)
        log.info("http source %s on %s:%d: bodies up to %d bytes (server max_payload %d)", ctx.vertex,
                 self.cfg.host, self.cfg.port, self.max_body, self.max_payload)
        await serve_until(server, ctx.stopping)  # the server ending by itself (port taken) raises
        log.info("http source %s on port %d closed", ctx.vertex, self.cfg.port)
