"""The HTTP source as a real process: 2xx only after storage, clear 4xx, 503 when full."""

from __future__ import annotations

import asyncio
import http.client
import json
import subprocess
import sys
import urllib.error
import urllib.request

from framework.local.embedded import free_port
from tests.conftest import REPO, Collector, wait_for
from tests.vertices.conftest import ready
from vertices.http.source import ENVELOPE_RESERVE


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def apost(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    return await asyncio.to_thread(post, url, body, headers)


async def start_http(runner, nc, sink_limits=None, auth=None, max_body_size: int | None = 1024):
    port = free_port()
    http = {"port": port, "host": "127.0.0.1"}
    if max_body_size is not None:
        http["maxBodySize"] = max_body_size
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


def post_raw(port: int, body: bytes, headers: dict[str, bytes]) -> tuple[int, dict]:
    """A POST with header values sent as raw bytes (urllib would refuse non-Latin-1 text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/vertices/in")
        for name, value in {**headers, "Content-Length": str(len(body)).encode()}.items():
            conn.putheader(name, value)
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


async def stored(nc, runner) -> int:
    return (await nc.jetstream().stream_info(f"nf_{runner.name}_out")).state.last_seq


async def test_body_limit_follows_the_servers_max_payload_and_a_big_body_never_breaks_the_source(runner, nc):
    """Default limit = max_payload - ENVELOPE_RESERVE: a body of exactly that size is stored, one
    byte more or a body + keys that would not fit the server's max_payload gets 413, and the
    source (its NATS connection) keeps working for the next request."""
    url, _ = await start_http(runner, nc, max_body_size=None)
    port = int(url.split(":")[2].split("/")[0])
    limit = nc.max_payload - ENVELOPE_RESERVE
    assert await apost(url, b"a" * limit, {"X-Natsflow-Id": "at-limit"}) == (200, {"id": "at-limit"})
    assert await apost(url, b"b" * (limit + 1)) == (413, {"error": f"body larger than {limit} bytes"})
    assert (await apost(url, b"c" * nc.max_payload))[0] == 413  # 1 MiB: before, this closed the connection
    many_keys = ",".join(f"key-{i}" for i in range(1500))  # ~12 KB of Nf-Keys: over max_payload with the body
    status, body = await apost(url, b"d" * limit, {"X-Natsflow-Keys": many_keys})
    assert status == 413 and body["error"].startswith("body and headers (") and \
        body["error"].endswith(f"bytes) exceed the NATS server's max_payload of {nc.max_payload} bytes")
    assert await apost(url, b"next", {"X-Natsflow-Id": "next"}) == (200, {"id": "next"})
    assert await stored(nc, runner) == 2  # the one at the limit and the next; nothing else
    assert await ready(port)
    assert runner.procs["in"].poll() is None
    assert "Traceback" not in runner.log("in")


async def test_header_bytes_that_are_not_utf8_get_400_and_the_source_keeps_going(runner, nc):
    url, _ = await start_http(runner, nc)
    port = int(url.split(":")[2].split("/")[0])
    cases = {
        "X-Natsflow-Keys": (b"caf\xe9", "header X-Natsflow-Keys is not valid UTF-8"),
        "X-Natsflow-Id": (b"\xc3\x28", "header X-Natsflow-Id is not valid UTF-8"),
        "X-Natsflow-Event-Time": (b"17\xff00", "header X-Natsflow-Event-Time is not valid UTF-8"),
        "traceparent": ("00-\u00e9".encode(), "header traceparent must be ASCII"),
    }
    for name, (value, reason) in cases.items():
        assert await asyncio.to_thread(post_raw, port, b"x", {name: value}) == (400, {"error": reason}), name
    # Digits outside ASCII are not epoch milliseconds, even though int() would take them.
    status, body = await asyncio.to_thread(post_raw, port, b"x", {"X-Natsflow-Event-Time": "\uff11\uff12".encode()})
    assert status == 400 and body["error"].startswith("X-Natsflow-Event-Time must be epoch milliseconds")
    status, body = await asyncio.to_thread(post_raw, port, b"x", {"X-Natsflow-Id": b"a\x01b"})
    assert (status, body) == (400, {"error": "X-Natsflow-Id must be at most 256 printable characters"})
    # UTF-8 keys and ids are fine, as before.
    status, body = await asyncio.to_thread(post_raw, port, b"ok", {"X-Natsflow-Keys": "café, b".encode(),
                                                                    "X-Natsflow-Id": "ünï".encode()})
    assert (status, body) == (200, {"id": "ünï"})
    assert await stored(nc, runner) == 1
    assert await ready(port) and runner.procs["in"].poll() is None
    assert "Traceback" not in runner.log("in")


def test_a_max_body_size_the_server_cannot_carry_is_an_error_at_start(runner, nats_url):
    """maxBodySize: 1 MiB on a server with the default 1 MiB max_payload: provision and the
    vertex itself refuse it with the field path and both numbers."""
    port = free_port()
    runner.write([{"name": "in", "source": {"http": {"port": port, "host": "127.0.0.1", "maxBodySize": 1 << 20}}},
                  {"name": "out", "sink": {"blackhole": {}}}], [{"from": "in", "to": "out"}])
    line = (f"{runner.file}: spec.vertices[0].source.http.maxBodySize: 1048576 bytes do not fit the NATS server's "
            f"max_payload of 1048576 bytes with the {ENVELOPE_RESERVE} bytes natsflow keeps for headers: set at most "
            f"{(1 << 20) - ENVELOPE_RESERVE}, leave it unset, or raise max_payload on the server")
    for args in (["provision", str(runner.file)], ["vertex", "--pipeline", str(runner.file), "--vertex", "in"]):
        done = subprocess.run([sys.executable, "-m", "framework.cli", *args, "--nats-url", nats_url], env=runner.env(),
                              cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done
        assert done.stderr.strip().splitlines()[-1] == line
        assert "Traceback" not in done.stderr
