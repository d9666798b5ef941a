"""The HTTP source as a real process: 2xx only after storage, clear 4xx, 503 when full."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

from framework.embedded import free_port
from tests.conftest import Collector, wait_for


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def apost(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return await asyncio.to_thread(post, url, body, headers)


async def ready(port: int) -> bool:
    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    return await asyncio.to_thread(probe)


async def start_http(runner, nc, sink_limits=None, auth=None):
    port = free_port()
    http = {"port": port, "host": "127.0.0.1", "maxBodySize": 1024}
    if auth:
        http["auth"] = {"token": auth}
    sink = {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}
    if sink_limits:
        sink["limits"] = sink_limits
    runner.write([{"name": "in", "source": {"http": http}}, sink], [{"from": "in", "to": "out"}])
    collector = await Collector().start(nc, f"{runner.name}.out")
    await runner.start_all()
    await wait_for(lambda: ready(port), 30, "the HTTP source to listen")
    return f"http://127.0.0.1:{port}/vertices/in", collector


async def test_post_is_stored_with_keys_event_time_and_id(runner, nc):
    url, out = await start_http(runner, nc)
    status, body = await apost(url, b"hello", {"X-Natsflow-Keys": "a, b", "X-Natsflow-Event-Time": "1700000000123",
                                              "X-Natsflow-Id": "order-1"})
    assert (status, body) == (200, {"id": "order-1"})
    assert (await nc.jetstream().stream_info(f"nf_{runner.name}_out")).state.last_seq == 1  # stored before 200
    await out.wait_count(1)
    m = out.msgs[0]
    assert m.data == b"hello"
    assert json.loads(m.headers["Nf-Keys"]) == ["a", "b"]
    assert m.headers["Nf-Event-Time"] == "1700000000123" and m.headers["Nf-Id"] == "order-1"
    # The same id again is deduplicated by the buffer: 200, stored once.
    assert (await apost(url, b"hello", {"X-Natsflow-Id": "order-1"}))[0] == 200
    assert (await nc.jetstream().stream_info(f"nf_{runner.name}_out")).state.last_seq == 1


async def test_bad_input_gets_4xx_with_reason(runner, nc):
    url, _ = await start_http(runner, nc, auth="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    assert await apost(url, b"x") == (401, {"error": "missing or wrong bearer token"})
    assert await apost(url, b"x", {"Authorization": "Bearer nope"}) == (401, {"error": "missing or wrong bearer token"})
    status, body = await apost(url, b"x", {**auth, "X-Natsflow-Event-Time": "yesterday"})
    assert status == 400 and "X-Natsflow-Event-Time must be epoch milliseconds" in body["error"]
    status, body = await apost(url, b"x" * 2000, auth)
    assert (status, body) == (413, {"error": "body larger than 1024 bytes"})
    assert (await apost(url.replace("/in", "/other"), b"x", auth))[0] == 404
    assert (await apost(url, b"ok", auth))[0] == 200


async def test_full_buffer_answers_503_and_keeps_what_it_accepted(runner, nc):
    url, _ = await start_http(runner, nc, sink_limits={"bufferMaxLength": 10, "bufferUsageLimit": 100})
    runner.kill("out")  # nobody drains the buffer
    statuses = [(await apost(url, f"m{i}".encode(), {"X-Natsflow-Id": f"m{i}"}))[0] for i in range(15)]
    assert statuses == [200] * 10 + [503] * 5
    assert (await nc.jetstream().stream_info(f"nf_{runner.name}_out")).state.messages == 10


async def test_token_from_a_secret_ref(runner, nc, monkeypatch):
    """`auth.token: {secretRef}`: the source reads the token from NATSFLOW_SECRET_WEB_TOKEN (what a
    rendered pod gets from the Secret); the pipeline file holds only the reference."""
    monkeypatch.setenv("NATSFLOW_SECRET_WEB_TOKEN", "t0ken-from-secret")
    url, out = await start_http(runner, nc, auth={"secretRef": {"name": "web", "key": "token"}})
    assert "t0ken-from-secret" not in runner.file.read_text()
    assert await apost(url, b"x") == (401, {"error": "missing or wrong bearer token"})
    assert (await apost(url, b"x", {"Authorization": "Bearer web"}))[0] == 401
    assert (await apost(url, b"ok", {"Authorization": "Bearer t0ken-from-secret"}))[0] == 200
    await out.wait_count(1)
    assert [m.data for m in out.msgs] == [b"ok"]
