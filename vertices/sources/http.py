"""`http`: `POST /vertices/<name>` stores the body in the first buffer and only then answers 2xx.

Headers: `X-Natsflow-Keys` (comma-separated), `X-Natsflow-Event-Time` (epoch ms), `X-Natsflow-Id`
(dedup id: a retried POST with the same id is stored once), W3C `traceparent`/`tracestate` (the
message joins the client's trace). Answers 400 for bad input, 401 for a
missing/wrong bearer token, 413 over the body limit, 503 while the buffer is full. `GET /livez` and
`GET /readyz` answer 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from typing import Any, Awaitable, Callable

import uvicorn

from framework.connectors import BufferFull, ConnectorContext, Emit, SourceRecord
from framework.spec import HttpSource as Config

log = logging.getLogger("natsflow.http")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HttpError(Exception):
    def __init__(self, status: int, reason: str):
        self.status = status
        self.reason = reason


async def respond(send: Send, status: int, body: dict[str, Any]) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]})
    await send({"type": "http.response.body", "body": raw})


def trace_headers(headers: dict[str, str]) -> dict[str, str] | None:
    """A client's W3C trace context travels with the message (the source's span, when tracing is
    on, becomes its child; when off, the context passes through unchanged)."""
    if "traceparent" not in headers:
        return None
    kept = {"traceparent": headers["traceparent"]}
    if "tracestate" in headers:
        kept["tracestate"] = headers["tracestate"]
    return kept


class HttpSource:
    def __init__(self, config: Config):
        self.cfg = config

    def record(self, headers: dict[str, str], body: bytes) -> SourceRecord:
        if self.cfg.auth is not None:
            supplied = headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {self.cfg.auth.token}".encode()):
                raise HttpError(401, "missing or wrong bearer token")
        raw_et = headers.get("x-natsflow-event-time")
        if raw_et is None:
            event_ms = int(time.time() * 1000)
        else:
            try:
                event_ms = int(raw_et)
            except ValueError:
                raise HttpError(400, f"X-Natsflow-Event-Time must be epoch milliseconds, got {raw_et!r}") from None
        raw_keys = headers.get("x-natsflow-keys")
        keys = [k.strip() for k in raw_keys.split(",") if k.strip()] if raw_keys else None
        data_id = headers.get("x-natsflow-id") or uuid.uuid4().hex
        if len(data_id) > 256 or any(c in data_id for c in "\r\n"):
            raise HttpError(400, "X-Natsflow-Id must be at most 256 characters on one line")
        return SourceRecord(body, data_id, event_ms, keys, trace_headers(headers), data_id)

    async def read_body(self, receive: Receive, declared: str | None) -> bytes:
        limit = self.cfg.max_body_size
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"body larger than {limit} bytes")
        chunks, size = [], 0
        while True:
            event = await receive()
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
            chunks.append(chunk)
            if not event.get("more_body"):
                return b"".join(chunks)

    def app(self, vertex: str, try_emit: Emit):
        route = f"/vertices/{vertex}"

        async def asgi(scope: dict[str, Any], receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                return
            path, method = scope["path"], scope["method"]
            if path in ("/livez", "/readyz") and method == "GET":
                return await respond(send, 200, {"status": "ok"})
            if path != route:
                return await respond(send, 404, {"error": f"no such path; POST to {route}"})
            if method != "POST":
                return await respond(send, 405, {"error": "use POST"})
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            try:
                record = self.record(headers, await self.read_body(receive, headers.get("content-length")))
                await try_emit([record])
            except HttpError as exc:
                return await respond(send, exc.status, {"error": exc.reason})
            except BufferFull as exc:
                return await respond(send, 503, {"error": str(exc), "retry": True})
            await respond(send, 200, {"id": record.id})

        return asgi

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        config = uvicorn.Config(self.app(ctx.vertex, try_emit), host=self.cfg.host, port=self.cfg.port,
                                log_level="warning", lifespan="off", access_log=False)
        server = uvicorn.Server(config)
        server.capture_signals = contextlib.nullcontext  # the worker owns SIGTERM/SIGINT
        task = asyncio.create_task(server.serve())
        stop = asyncio.create_task(ctx.stopping.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            stop.cancel()
            task.result()  # e.g. the port is taken: let the error end the worker
            raise RuntimeError("the HTTP server stopped by itself")
        server.should_exit = True  # finish in-flight requests, then return
        await task
        log.info("http source %s on port %d closed", ctx.vertex, self.cfg.port)
