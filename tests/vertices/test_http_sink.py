"""The `http` sink against a real HTTP server on loopback, started by the test, that can be told to
fail: exact requests and headers, a receiver down for a while loses nothing, 4xx rejects one message."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Callable

from aiohttp import web

from framework.local.embedded import free_port
from tests.conftest import wait_for


class Receiver:
    """A small HTTP server; `status(body)` decides each answer. Keeps every request it answered 2xx
    in `stored` and counts all requests in `calls`."""

    def __init__(self, status: Callable[[bytes], int] = lambda body: 200):
        self.status = status
        self.stored: list[tuple[bytes, dict[str, str]]] = []
        self.calls = 0
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        status = self.status(body)
        if 200 <= status < 300:
            self.stored.append((body, dict(request.headers)))
        return web.Response(status=status, text=f"status {status} for {body[:20]!r}")

    async def start(self) -> "Receiver":
        app = web.Application()
        app.router.add_route("*", "/ingest", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


async def feed(nc, runner, n: int, payload: Callable[[int], bytes] = lambda i: f"m{i}".encode(),
               keys: Callable[[int], list[str] | None] = lambda i: None) -> str:
    """A JetStream stream holding n messages, read by the pipeline's `jetstream` source."""
    js = nc.jetstream()
    stream = f"SRC_{runner.name}"
    await js.add_stream(name=stream, subjects=[f"{runner.name}.src"])
    for i in range(n):
        headers = {"Nf-Keys": json.dumps(k)} if (k := keys(i)) else None
        await js.publish(f"{runner.name}.src", payload(i), headers=headers)
    return stream


async def all_through(nc, runner, stream: str, n: int) -> bool:
    """The source has stored and acked all n records, and every buffer is empty."""
    return await runner.source_consumed(nc, stream) and await runner.drained(nc)


def pipeline(runner, stream: str, sink: dict) -> None:
    runner.write([{"name": "in", "source": {"jetstream": {"stream": stream}}}, {"name": "out", "sink": sink}],
                 [{"from": "in", "to": "out"}], limits={"readBatchSize": 100})


async def test_http_sink_one_request_per_message_with_headers(runner, nc):
    receiver = await Receiver().start()
    try:
        stream = await feed(nc, runner, 300, keys=lambda i: [f"k{i % 3}"])
        pipeline(runner, stream, {"http": {"url": receiver.url, "method": "PUT",
                                           "headers": {"Authorization": "Bearer t"}}})
        await runner.start_all()
        await wait_for(lambda: len(receiver.stored) >= 300, 30, "300 requests")
        await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
        assert receiver.calls == 300
        assert sorted(b for b, _ in receiver.stored) == sorted(f"m{i}".encode() for i in range(300))
        body, h = next((b, h) for b, h in receiver.stored if b == b"m4")
        assert h["Idempotency-Key"] == h["X-Natsflow-Id"] == f"{stream}:5"
        assert h["X-Natsflow-Keys"] == "k1" and h["Authorization"] == "Bearer t"
        assert int(h["X-Natsflow-Event-Time"]) > 1_600_000_000_000
    finally:
        await receiver.stop()


async def test_http_sink_down_for_a_while_loses_nothing(runner, nc):
    state = {"up": False}
    receiver = await Receiver(lambda body: 200 if state["up"] else 503).start()
    try:
        stream = await feed(nc, runner, 500)
        pipeline(runner, stream, {"http": {"url": receiver.url}})
        await runner.start_all()
        await wait_for(lambda: runner.log("out").count("answered 503") >= 3, 30, "three failed write attempts")
        assert receiver.stored == []
        state["up"] = True
        await wait_for(lambda: len(receiver.stored) >= 500, 60, "500 requests after the receiver is back")
        await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
        bodies = [b for b, _ in receiver.stored]
        assert len(bodies) == 500 and set(bodies) == {f"m{i}".encode() for i in range(500)}
    finally:
        await receiver.stop()


async def test_http_sink_4xx_rejects_only_that_message(runner, nc):
    receiver = await Receiver(lambda body: 422 if body.endswith(b"7") else 200).start()
    try:
        stream = await feed(nc, runner, 100)
        pipeline(runner, stream, {"http": {"url": receiver.url}})
        await runner.start_all()
        dlq = f"nf_{runner.name}_out_dlq"
        await wait_for(lambda: all_through(nc, runner, stream, 100), 30, "100 records through")

        async def dead() -> bool:
            return await runner.stream_messages(nc, dlq) >= 10

        await wait_for(dead, 10, "10 dead letters")
        assert await runner.stream_messages(nc, dlq) == 10
        assert sorted(b for b, _ in receiver.stored) == sorted(f"m{i}".encode() for i in range(100) if i % 10 != 7)
        psub = await nc.jetstream().pull_subscribe(f"nfdlq.{runner.name}.out", durable=None, stream=dlq)
        dead = await psub.fetch(10, timeout=5)
        assert sorted(m.data for m in dead) == sorted(f"m{i}".encode() for i in range(7, 100, 10))
        assert all("answered 422: status 422" in m.headers["Nf-Error"] for m in dead)
    finally:
        await receiver.stop()


class Gate(Receiver):
    """Holds each request (up to 3 s) until `width` are in flight at once; records the most seen."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.in_flight = self.max_in_flight = 0
        self.full = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.in_flight >= self.width:
            self.full.set()
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.full.wait(), 3)
            return await super().handle(request)
        finally:
            self.in_flight -= 1


async def test_http_sink_concurrency_above_the_client_pool_default(runner, nc):
    receiver = await Gate(150).start()  # aiohttp's connection pool holds 100 unless told otherwise
    try:
        stream = await feed(nc, runner, 300)
        runner.write([{"name": "in", "source": {"jetstream": {"stream": stream}}},
                      {"name": "out", "sink": {"http": {"url": receiver.url, "concurrency": 150}}}],
                     [{"from": "in", "to": "out"}], limits={"readBatchSize": 200})
        await runner.provision()
        runner.start("in")

        async def buffered() -> bool:  # the sink's first read then holds 200
            return await runner.stream_messages(nc, f"nf_{runner.name}_out") == 300

        await wait_for(buffered, 30, "300 messages in the sink's buffer")
        runner.start("out")
        await wait_for(lambda: all_through(nc, runner, stream, 300), 60, "300 records through")
        assert receiver.max_in_flight == 150 and receiver.calls == 300
    finally:
        await receiver.stop()
