"""natsflow's one HTTP stack: Starlette apps on uvicorn. The worker's health and metrics app
(`/metrics`, `/livez`, `/readyz`) lives here, with the helpers the UI server and the HTTP source
share: a plain-bytes response, a body read with a limit, and a uvicorn server that leaves the
process's signals to its owner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

# /readyz: a function returning the reasons the worker is not ready (empty = ready), or a bool.
ReadyCheck = Callable[[], "list[str] | bool"]


class BodyTooLarge(Exception):
    """A request body (declared or streamed) went over its limit."""

    def __init__(self, limit: int):
        super().__init__(f"body larger than {limit} bytes")
        self.limit = limit


def plain(status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> Response:
    """Exactly these bytes (Starlette adds content-length); no charset appended, no re-encoding."""
    response = Response(body, status_code=status, headers=headers)
    # Set after construction: Response would add "; charset=utf-8" to a text/* media type.
    response.headers["content-type"] = content_type
    return response


def json_response(status: int, doc: Any, headers: dict[str, str] | None = None) -> Response:
    """`json.dumps` as it is (spaces after separators, ASCII), as application/json."""
    return plain(status, json.dumps(doc).encode(), "application/json", headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it is known to exceed `limit` bytes: by its declared
    Content-Length, else while it streams in, so memory stays bounded by the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def health_app(registry: CollectorRegistry, ready: ReadyCheck) -> Starlette:
    """`/livez` (the process answers), `/readyz` (200 when `ready()` finds nothing missing, else
    503 with the reasons) and Prometheus metrics on every other path (as prometheus-client's own
    app does)."""

    async def livez(_: Request) -> Response:
        return plain(200, b"ok\n", "text/plain")

    async def readyz(_: Request) -> Response:
        missing = ready()
        if isinstance(missing, bool):  # an older check: True = ready
            missing = [] if missing else ["not connected or stopping"]
        if missing:
            return plain(503, f"not ready: {'; '.join(missing)}\n".encode(), "text/plain")
        return plain(200, b"ready\n", "text/plain")

    return Starlette(routes=[Route("/livez", livez), Route("/readyz", readyz),
                             Mount("/", app=make_asgi_app(registry))])


class _GuestServer(uvicorn.Server):
    """A uvicorn server in a process whose owner handles SIGTERM/SIGINT (a worker drains on them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server(app: ASGIApp, host: str, port: int, *, lifespan: Literal["auto", "on", "off"] = "off",
           own_signals: bool = False, loop: str = "auto") -> uvicorn.Server:
    """A quiet uvicorn server (warnings only, no access log). `own_signals=False` leaves
    SIGTERM/SIGINT to the caller."""
    config = uvicorn.Config(app, host=host, port=port, lifespan=lifespan, log_level="warning", access_log=False,
                            loop=loop)
    return uvicorn.Server(config) if own_signals else _GuestServer(config)


class BackgroundServer:
    """An app served from a daemon thread with its own event loop, so scrapes and probes never
    wait for (or slow) the worker's loop. The port is bound before `start` returns: a taken port
    fails the caller at once."""

    def __init__(self, app: ASGIApp, port: int, addr: str = "0.0.0.0", name: str = "natsflow-http"):
        self._sock = socket.create_server((addr, port))
        self.port: int = self._sock.getsockname()[1]
        self._server = server(app, addr, self.port, loop="asyncio")
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, name=name,
                                        daemon=True)

    def start(self) -> BackgroundServer:
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop answering and close the port (the thread is a daemon: also ends with the process)."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()


async def serve_until(srv: uvicorn.Server, stopping: asyncio.Event,
                      sockets: list[socket.socket] | None = None) -> None:
    """Serve until `stopping` (an asyncio.Event) is set, then finish in-flight requests. The
    server ending by itself (e.g. its port is taken) raises. `sockets`: already bound ones."""
    task = asyncio.create_task(srv.serve(sockets=sockets))
    stop = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stop.cancel()
        task.result()
        raise RuntimeError("the HTTP server stopped by itself")
    srv.should_exit = True
    await task


__all__ = ["BackgroundServer", "BodyTooLarge", "ReadyCheck", "health_app", "json_response", "plain", "read_body",
           "serve_until", "server"]
