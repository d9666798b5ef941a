"""The `natsflow ui` server: a small Starlette app on uvicorn. It polls JetStream (framework/console/status.py)
once per interval for every browser at once, turns totals into rates, and serves the static page.

Routes: `/` the page, `/static/*` its assets, `/api/pipeline` the graph and its layout,
`/api/status` the latest poll, `/api/vertex/<name>` one vertex's spec and recent dead letters,
`/livez`. Read-only: nothing here changes the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from framework.console.status import Rates, Sample, VertexStatus, connection_counts, rates
from framework.console.ui.layout import layout
from framework.isb import envelope, names
from framework.local.watch import FileWatch
from framework.observability.http import json_response, plain
from framework.observability.http import server as http_server
from framework.spec import Pipeline, SpecError, load_pipeline
from framework.transport.settings import NatsSettings

log = logging.getLogger("natsflow.ui")

STATIC = Path(__file__).parent / "static"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
SECRET_WORDS = ("token", "password", "passwd", "passphrase", "secret", "creds", "credential", "authorization",
                "api-key", "api_key", "apikey", "private_key", "private-key", "sasl")
URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]*@", re.IGNORECASE)
DSN_PASSWORD = re.compile(r"(password\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)
DEAD_LETTERS_SHOWN = 5
DEAD_LETTER_SCAN = 200  # sequences looked at (newest first) to find them; deleted ones are skipped

class UiOptions(BaseModel):
    """How `natsflow ui` polls; camelCase aliases like the pipeline spec."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    interval: float = Field(1.0, gt=0, description="seconds between JetStream polls")
    monitor_url: str | None = Field(None, alias="monitorUrl",
                                    description="nats-server monitoring URL: replicas are counted from /connz")


# ---- data ---------------------------------------------------------------------------------------


def redact(value: Any) -> Any:
    """The vertex spec as shown in the browser, without credentials (http auth tokens, ...)."""
    if isinstance(value, dict):
        return {k: "***" if any(w in k.lower() for w in SECRET_WORDS) and v is not None else redact(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):  # passwords inside URLs and DSNs: postgres://u:pw@h, redis://:pw@h, password=pw
        return DSN_PASSWORD.sub(r"\1***", URL_PASSWORD.sub(r"\g<scheme>\g<user>:***@", value))
    return value


class PipelineFile:
    """The pipeline the page shows, re-read when its file changes (`natsflow up` applies edits
    live); `revision` tells the page to redraw."""

    def __init__(self, p: Pipeline, path: Path | None = None):
        self.p, self.path, self.revision = p, path, 0
        self.error: str | None = None
        self.layout = layout(p).model_dump(by_alias=True)
        self._watch = FileWatch(path)

    def refresh(self) -> bool:
        """True when a changed, valid file replaced the pipeline."""
        if self.path is None or not self._watch.changed():
            return False
        try:
            new = load_pipeline(self.path, check_handlers=False, allow_unset=True)
        except SpecError as exc:
            self.error = f"the pipeline file changed but is not valid; showing the previous version: {exc}"
            return False
        self.p, self.error, self.revision = new, None, self.revision + 1
        self.layout = layout(new).model_dump(by_alias=True)
        return True


class StatusPoller:
    """One JetStream poll per interval, shared by every open page; rates from successive polls."""

    def __init__(self, nc: Client, source: PipelineFile, options: UiOptions):
        self.nc, self.js, self.source, self.options = nc, nc.jetstream(), source, options
        self.latest: dict[str, Any] = {"pipeline": source.p.name, "time": None, "error": None, "vertices": [],
                                       "edges": [], "revision": source.revision}
        self._previous: Sample | None = None
        self.polls = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.options.interval)
            await self.poll_safely()

    async def poll_safely(self) -> None:
        try:
            await self.poll()
        except Exception as exc:
            log.warning("status poll failed: %s", exc)
            self.latest = {**self.latest, "error": f"cannot read JetStream: {exc or type(exc).__name__}"}

    @property
    def p(self) -> Pipeline:
        return self.source.p

    async def poll(self) -> dict[str, Any]:
        if self.source.refresh():
            self._previous = None  # other vertices now: rates start over
        sample = await Sample.take(self.js, self.p)
        conns, conn_error = await self._connections()
        per_vertex = rates(self.p, self._previous, sample)  # the same rates as `natsflow status`
        self._previous = sample
        vertices = [self._vertex(r, conns, per_vertex[r.name]) for r in sample.rows.values()]
        for r in sample.rows.values():  # a fused chain's later vertices: no buffer or process of their own
            vertices += [self._vertex(VertexStatus(name, self.p.vertex(name).kind, fused=r.fused), conns, Rates())
                         for name in (r.fused or [])[1:]]
        by_name = {v["name"]: v for v in vertices}
        self.polls += 1
        self.latest = {"pipeline": self.p.name, "time": int(time.time() * 1000), "poll": self.polls,
                       "revision": self.source.revision, "error": self.source.error or conn_error,
                       "vertices": vertices, "edges": self._edges(by_name)}
        return self.latest

    async def _connections(self) -> tuple[Counter[str] | None, str | None]:
        if not self.options.monitor_url:
            return None, None
        try:
            return await asyncio.to_thread(connection_counts, self.options.monitor_url, self.p.name), None
        except Exception as exc:
            return None, f"cannot read {self.options.monitor_url}/connz: {exc}"

    def _vertex(self, r: VertexStatus, conns: Counter[str] | None, rate: Rates) -> dict[str, Any]:
        limit = self.p.limits_for(r.name).buffer_usage_limit
        # rate: what it finished (a source: what arrives in the buffers it alone feeds); inRate:
        # what arrives in its buffer. None until two polls, or when not known.
        out = {**asdict(r), "usageLimit": limit, "usage": None, "rate": _round(rate.out), "inRate": _round(rate.into)}
        if r.capacity and r.buffered is not None:
            out["usage"] = round(100.0 * r.buffered / r.capacity, 2)
        if conns is not None:
            out["replicas"], out["replicasFrom"] = conns.get(r.name, 0), "connections"
        else:
            out["replicasFrom"] = "heartbeats" if r.replicas is not None else None
        return out

    def _edges(self, by_name: dict[str, dict]) -> list[dict[str, Any]]:
        edges = []
        for e in self.p.spec.edges:
            target = by_name[e.to]
            usage, limit = target["usage"], target["usageLimit"]
            # Coloured against the usage limit, where writers start to wait (back pressure).
            level = None if usage is None else "full" if usage >= limit else "busy" if usage >= limit / 2 else "ok"
            edges.append({"from": e.from_, "to": e.to, "usage": usage, "level": level})
        return edges


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


async def recent_dead_letters(nc: Client, p: Pipeline, vertex: str, n: int = DEAD_LETTERS_SHOWN) -> dict[str, Any]:
    """The newest `n` messages of the vertex's dead-letter stream with their `Nf-Error` header:
    what the page calls the vertex's recent errors."""
    js = nc.jetstream()
    stream = names.dlq_stream_name(p.name, vertex)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return {"stream": stream, "total": None, "messages": []}
    found: list[dict[str, Any]] = []
    last, first = info.state.last_seq, info.state.first_seq
    seq = last
    while seq >= max(first, 1) and seq > last - DEAD_LETTER_SCAN and len(found) < n:
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            seq -= 1
            continue
        headers = msg.headers or {}
        found.append({
            "seq": msg.seq, "time": msg.time.isoformat() if msg.time else None,
            "error": headers.get(envelope.HDR_ERROR), "vertex": headers.get(envelope.HDR_ERROR_VERTEX),
            # keys raw: a broken envelope lands here too
            "id": headers.get(envelope.HDR_ID), "keys": headers.get(envelope.HDR_KEYS),
            "value": (msg.data or b"")[:500].decode("utf-8", "replace"),
        })
        seq -= 1
    return {"stream": stream, "total": info.state.messages, "messages": found}


def vertex_detail(p: Pipeline, name: str) -> dict[str, Any]:
    v = p.vertex(name)
    return {
        "name": name, "kind": v.kind,
        "spec": redact(v.model_dump(mode="json", by_alias=True, exclude_none=True)),
        "limits": p.limits_for(name).model_dump(mode="json"),
        "in": [e.from_ for e in p.in_edges(name)],
        "out": [e.to for e in p.out_edges(name)],
        # A keyed reduce with partitions has one buffer stream per partition.
        "buffer": None if v.kind == "source" else ", ".join(names.stream_name(p.name, name, part)
                                                             for part in p.partitions(name)),
    }


# ---- HTTP (Starlette) -----------------------------------------------------------------------------


class UiApp:
    """The page's Starlette app on a connected NATS client: lifespan starts the poller and closes
    the client at the end."""

    def __init__(self, p: Pipeline, nc: Client, options: UiOptions | None = None, file: str | Path | None = None):
        self.source = PipelineFile(p, Path(file) if file else None)
        self.nc, self.options = nc, options or UiOptions()
        self.poller: StatusPoller | None = None
        self._task: asyncio.Task | None = None
        self._assets = {f.name: f for f in STATIC.iterdir() if f.suffix in CONTENT_TYPES}
        routes = [Route("/", self._index), Route("/static/{name:path}", self._static),
                  Route("/api/pipeline", self._pipeline), Route("/api/status", self._status),
                  Route("/api/vertex/{name:path}", self._vertex), Route("/livez", self._livez)]
        self.app = Starlette(routes=routes, lifespan=self._lifespan,
                             exception_handlers={404: _not_found, 405: _not_allowed},
                             middleware=[Middleware(ReadOnly)])

    async def startup(self) -> None:
        self.poller = StatusPoller(self.nc, self.source, self.options)
        await self.poller.poll_safely()  # the first page load already has numbers
        self._task = asyncio.create_task(self.poller.run())

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.nc.close()

    @contextlib.asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.startup()
        try:
            yield
        finally:
            await self.shutdown()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _index(self, _: Request) -> Response:
        return self._asset("index.html")

    async def _static(self, request: Request) -> Response:
        return self._asset(request.path_params["name"])

    async def _pipeline(self, _: Request) -> Response:
        return _json(200, {"pipeline": self.source.p.name, "layout": self.source.layout,
                           "revision": self.source.revision, "interval": self.options.interval})

    async def _status(self, _: Request) -> Response:
        return _json(200, self.poller.latest if self.poller else {})

    async def _livez(self, _: Request) -> Response:
        return _text(200, b"ok\n", "text/plain")

    def _asset(self, name: str) -> Response:
        f = self._assets.get(name)  # only files shipped in static/: no path traversal
        if f is None:
            return _text(404, b"not found\n", "text/plain")
        return _text(200, f.read_bytes(), CONTENT_TYPES[f.suffix])

    async def _vertex(self, request: Request) -> Response:
        name = request.path_params["name"]
        try:
            p = self.source.p
            detail = vertex_detail(p, name)
        except KeyError as exc:
            return _json(404, {"error": str(exc.args[0])})
        try:
            detail["deadLetters"] = await recent_dead_letters(self.nc, p, name)
        except Exception as exc:
            detail["deadLetters"] = {"error": f"cannot read dead letters: {exc}", "messages": []}
        return _json(200, detail)


class ReadOnly:
    """Every path answers GET and HEAD only: anything else is 405 before routing."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            await _text(405, b"method not allowed\n", "text/plain")(scope, receive, send)
            return
        await self.app(scope, receive, send)


_NO_STORE = {"cache-control": "no-store"}


def _text(status: int, body: bytes, content_type: str) -> Response:
    return plain(status, body, content_type, _NO_STORE)


def _json(status: int, doc: Any) -> Response:
    return json_response(status, doc, _NO_STORE)


async def _not_found(_: Request, __: Exception) -> Response:
    return _text(404, b"not found\n", "text/plain")


async def _not_allowed(_: Request, __: Exception) -> Response:
    return _text(405, b"method not allowed\n", "text/plain")


async def serve(p: Pipeline, settings: NatsSettings, host: str = "127.0.0.1", port: int = 8321,
                options: UiOptions | None = None, file: str | Path | None = None) -> None:
    # Connected before the HTTP server starts: a bad credential or an unreachable server ends the
    # command with one line (bounded by the connect timeout), and SIGTERM is not yet uvicorn's.
    nc = await settings.connect(f"natsflow-ui-{p.name}")
    app = UiApp(p, nc, options, file)
    server = http_server(app.app, host, port, lifespan="on", own_signals=True)
    print(f"natsflow ui: pipeline {p.name} on http://{host}:{port}/ (NATS {settings.shown_url})", flush=True)
    await server.serve()
