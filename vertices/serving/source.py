"""`serving`: request/response through the pipeline (docs/serving.md).

  POST /v1/process/sync    stores the body as a message of a new request and answers with the
                           request's results once it is complete (200), its error when a vertex
                           dead-lettered it (500), or what came so far after requestTimeout (504)
  POST /v1/process/async   stores it and answers 202 {"id": ...} at once
  GET  /v1/process/fetch?id=   the results so far and whether the request is complete (404: unknown id)
  GET  /v1/process/sse?id=     server-sent events: `result` per result as it is produced, then
                           `done` (or `error`, or `timeout` after requestTimeout)

Answers are JSON: {"id", "complete", "results": [text, ...]} plus "error" and "vertex" when a
vertex dead-lettered the request. Results are UTF-8 text (bytes that are not are replaced).

The request id travels with the message (`Nf-Request-Id`, framework/isb/requests.py); results
come back through the requests KV bucket, which every replica watches per request, so any
replica can answer any request and a restarted middle vertex only delays the answer. Bearer
auth, body limits, 400/401/413/503 as the `http` source (vertices/http/source.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable

from nats import errors as nats_errors
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from framework.connector import (
    BufferFull,
    ConnectorContext,
    Emit,
    RecordRejected,
    SourceRecord,
)
from framework.isb import names
from framework.isb.requests import (
    MIN_TTL_S,
    RequestState,
    accepted_key,
    part_order,
    provision_bucket,
    request_headers,
    valid_id,
    watch_keys,
)
from framework.observability.http import BodyTooLarge, json_response, read_body, serve_until
from framework.observability.http import server as http_server
from framework.spec import DEFAULT_BUFFERS
from vertices.http.source import HttpError, RequestHeaders, authorize, body_limit, trace_headers
from vertices.serving.config import ServingSourceConfig as Config
from vertices.serving.hub import Hub

log = logging.getLogger("natsflow.serving")

PREFIX = "/v1/process"
# Which replica answered (a response header): replicas share a port and any may answer.
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


def text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def answer(rid: str, state: RequestState) -> dict[str, object]:
    doc: dict[str, object] = {"id": rid, "complete": state.complete,
                              "results": [text(r) for r in state.ordered_results()]}
    if state.truncated:
        doc["truncated"] = len(state.truncated)
    error = state.error()
    if error is not None:
        doc.update(error)
    return doc


async def expired(wait: Awaitable[None]) -> bool:
    """Whether `wait` ended by its deadline (TimeoutError) rather than by completing."""
    try:
        await wait
    except TimeoutError:
        return True
    return False


def sse_event(event: str, data: str) -> bytes:
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"event: {event}\n{lines}\n".encode()


def shared_socket(host: str, port: int) -> socket.socket:
    """The listening socket, bound with SO_REUSEPORT: replicas on one machine (`natsflow run`
    with scale > 1) share the port and the kernel spreads connections over them; any of them
    can answer any request, since answers come through the requests bucket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Follow:
    """One request's ledger keys as a KV watch delivers them (existing ones first)."""

    def __init__(self, kv: KeyValue, rid: str):
        self.kv = kv
        self.rid = rid
        self.state = RequestState()
        self.caught_up = False  # the keys that existed when the watch started are all in

    async def __aenter__(self) -> Follow:
        self.watcher = await self.kv.watch(watch_keys(self.rid), ignore_deletes=True, inactive_threshold=5.0)
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self.watcher.stop()
        except (TimeoutError, nats_errors.Error) as exc:
            log.debug("stopping the watch of request %s: %s", self.rid, exc)

    async def next(self, deadline: float) -> str | None:
        """Wait (until `deadline`, monotonic) for the next entry; the part when it was a result.
        Raises TimeoutError at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        try:
            entry = await self.watcher.updates(timeout=left)
        except nats_errors.TimeoutError:
            raise TimeoutError from None
        if entry is None:
            self.caught_up = True
            return None
        return self.state.apply(entry.key, entry.value)

    async def catch_up(self, deadline: float) -> None:
        while not self.caught_up:
            await self.next(deadline)

    async def until_complete(self, deadline: float) -> None:
        while not self.state.complete:
            await self.next(deadline)


class ServingSource:
    def __init__(self, config: Config):
        self.cfg = config
        self.max_body = config.max_body_size or 0  # set from the server's max_payload in run()
        self.max_payload = 0
        self.kv: KeyValue | None = None
        self.hub: Hub | None = None

    def authorize(self, headers: RequestHeaders) -> None:
        authorize(self.cfg.auth, headers)

    def request_id(self, headers: RequestHeaders) -> tuple[str, str, bool]:
        """(request id, data id, whether the client named it): new ones, or derived from the
        client's `msgIdHeader` value so a retried request is the same request (and its message
        stored once)."""
        if self.cfg.msg_id_header is not None:
            given = headers.text(self.cfg.msg_id_header)
            if given:
                if len(given) > 256 or not given.isprintable():
                    raise HttpError(400, f"{self.cfg.msg_id_header} must be at most 256 printable characters")
                return hashlib.sha256(given.encode()).hexdigest()[:32], given, True
        rid = uuid.uuid4().hex
        return rid, rid, False

    async def read(self, request: Request) -> tuple[str, SourceRecord, bool]:
        """Check and read one request: (its id, its message, whether the client named the id)."""
        headers = RequestHeaders(request.headers.raw)
        self.authorize(headers)  # before reading a body nobody may send
        body = await read_body(request, self.max_body)
        rid, data_id, keyed = self.request_id(headers)
        user = {**(trace_headers(headers) or {}), **request_headers(rid)}
        return rid, SourceRecord(body, rid, int(time.time() * 1000), None, user, data_id), keyed

    async def store(self, record: SourceRecord, try_emit: Emit) -> None:
        assert self.kv is not None
        await self.kv.put(accepted_key(record.offset), b"")  # before the message: fetch knows the id at once
        await try_emit([record])

    async def wait(self, rid: str, record: SourceRecord, keyed: bool, try_emit: Emit) -> Response:
        """Store the request and answer once it is complete (504 at requestTimeout). A new id
        waits through the hub; a client-named one may be a retry whose results already exist,
        so it reads them with its own watch."""
        timeout = self.cfg.request_timeout
        deadline = time.monotonic() + timeout
        if keyed or self.hub is None:
            await self.store(record, try_emit)
            assert self.kv is not None
            async with Follow(self.kv, rid) as follow:
                state = follow.state
                timed_out = await expired(follow.until_complete(deadline))
        else:
            waiter = self.hub.register(rid)
            state = waiter.state
            try:
                await self.store(record, try_emit)
                timed_out = await expired(waiter.until_complete(deadline))
            finally:
                self.hub.release(rid)
        if timed_out:
            doc = answer(rid, state)
            doc["error"] = f"no complete result within requestTimeout ({timeout:g}s)"
            return json_response(504, doc)
        doc = answer(rid, state)
        return json_response(500 if "error" in doc else 200, doc)

    def query_id(self, request: Request) -> str:
        rid = request.query_params.get("id", "")
        if not valid_id(rid):
            raise HttpError(400, "id must be a request id (letters, digits, - and _)")
        return rid

    async def known(self, follow: Follow, deadline: float) -> None:
        await follow.catch_up(deadline)
        if not follow.state.accepted and not follow.state.results:
            # A watch can say "caught up" before an entry written a moment ago reaches it (seen once
            # under load): ask for the request's first key directly before answering 404.
            assert self.kv is not None
            try:
                await self.kv.get(accepted_key(follow.rid))
            except NotFoundError:
                raise HttpError(404, f"no request {follow.rid} (unknown, or older than its results are kept)") from None
            follow.state.accepted = True

    def app(self, try_emit: Emit) -> Starlette:
        timeout = self.cfg.request_timeout

        async def guarded(request: Request, handle: object) -> Response:
            try:
                response: Response = await handle(request)  # type: ignore[operator]
            except BodyTooLarge as exc:
                response = json_response(413, {"error": str(exc)})
            except HttpError as exc:
                response = json_response(exc.status, {"error": exc.reason})
            except RecordRejected as exc:
                response = json_response(400, {"error": str(exc)})
            except BufferFull as exc:
                response = json_response(503, {"error": str(exc), "retry": True})
            response.headers["X-Natsflow-Replica"] = REPLICA
            return response

        async def sync(request: Request) -> Response:
            rid, record, keyed = await self.read(request)
            return await self.wait(rid, record, keyed, try_emit)

        async def async_(request: Request) -> Response:
            rid, record, _ = await self.read(request)
            await self.store(record, try_emit)
            return json_response(202, {"id": rid})

        async def fetch(request: Request) -> Response:
            self.authorize(RequestHeaders(request.headers.raw))
            rid = self.query_id(request)
            assert self.kv is not None
            async with Follow(self.kv, rid) as follow:
                await self.known(follow, time.monotonic() + 5.0)
            return json_response(200, answer(rid, follow.state))

        async def sse(request: Request) -> Response:
            self.authorize(RequestHeaders(request.headers.raw))
            rid = self.query_id(request)
            assert self.kv is not None
            follow = await Follow(self.kv, rid).__aenter__()
            try:
                await self.known(follow, time.monotonic() + 5.0)
            except BaseException:
                await follow.__aexit__()
                raise
            return StreamingResponse(self.events(follow, timeout), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})

        def route(path: str, handle: object, method: str) -> Route:
            async def endpoint(request: Request) -> Response:
                return await guarded(request, handle)
            return Route(f"{PREFIX}/{path}", endpoint, methods=[method])

        async def health(_: Request) -> Response:
            return json_response(200, {"status": "ok"})

        return Starlette(routes=[Route("/livez", health), Route("/readyz", health),
                                 route("sync", sync, "POST"), route("async", async_, "POST"),
                                 route("fetch", fetch, "GET"), route("sse", sse, "GET")])

    async def events(self, follow: Follow, timeout: float) -> AsyncIterator[bytes]:
        """The SSE stream: results already there (in order), then each as it comes."""
        deadline = time.monotonic() + timeout
        try:
            sent: set[str] = set()
            for part in sorted(follow.state.results, key=part_order):
                sent.add(part)
                yield sse_event("result", text(follow.state.results[part]))
            while not follow.state.complete:
                try:
                    part = await follow.next(deadline)
                except TimeoutError:
                    yield sse_event("timeout", json.dumps({"error": f"not complete within {timeout:g}s"}))
                    return
                if part is not None and part not in sent:
                    sent.add(part)
                    yield sse_event("result", text(follow.state.results[part]))
            error = follow.state.error()
            if error is not None:
                yield sse_event("error", json.dumps(error))
            else:
                yield sse_event("done", json.dumps({"id": follow.rid, "complete": True}))
        finally:
            await follow.__aexit__()

    async def open_bucket(self, ctx: ConnectorContext) -> KeyValue:
        """The requests bucket (`provision` makes it; a worker started alone creates it)."""
        js = ctx.nc.jetstream()
        try:
            return await js.key_value(names.requests_bucket(ctx.pipeline))
        except NotFoundError:
            await provision_bucket(js, ctx.pipeline, DEFAULT_BUFFERS, max(MIN_TTL_S, 2 * self.cfg.request_timeout))
            return await js.key_value(names.requests_bucket(ctx.pipeline))

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        self.max_payload = ctx.nc.max_payload
        self.max_body = body_limit(self.cfg, self.max_payload)  # type: ignore[arg-type]
        self.kv = await self.open_bucket(ctx)
        self.hub = Hub(ctx.nc.jetstream(), ctx.pipeline)
        await self.hub.start()
        sock = shared_socket(self.cfg.host, self.cfg.port)
        server = http_server(self.app(try_emit), self.cfg.host, self.cfg.port)
        port = sock.getsockname()[1]
        log.info("serving source %s on %s:%d: requestTimeout %gs", ctx.vertex, self.cfg.host, port,
                 self.cfg.request_timeout)
        try:
            await serve_until(server, ctx.stopping, [sock])
        finally:
            sock.close()
            await self.hub.close()
        log.info("serving source %s on port %d closed", ctx.vertex, port)
