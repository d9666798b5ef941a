"""Serving: HTTP → UDF → serve with each vertex its own process. A request is answered with every
result the pipeline produced for it, an empty list when it was dropped, the error when a vertex
dead-lettered it, and 504 after requestTimeout; any replica of the source can answer."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request

import pytest

from framework.isb.requests import MAX_RESULTS, RequestState, bucket_ttl, serving_pipeline
from framework.local.embedded import free_port
from framework.spec import SpecError, parse_pipeline
from tests.conftest import wait_for
from tests.vertices.conftest import ready

AUTH = {"Authorization": "Bearer s3cret"}


def call(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    """(status, JSON body, the replica that answered)."""
    req = urllib.request.Request(url, data=body, method=method, headers={**AUTH, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read()), resp.headers.get("X-Natsflow-Replica", "")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers.get("X-Natsflow-Replica", "")


async def acall(method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
    return await asyncio.to_thread(call, method, url, body, headers)


async def sync(base: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    status, doc, _ = await acall("POST", f"{base}/v1/process/sync", body, headers)
    doc.pop("id", None)
    return status, doc


def read_sse(url: str) -> list[tuple[float, str, str]]:
    """Every (arrival time, event, data) of an SSE stream until the server ends it."""
    host, port = url.split("/")[2].split(":")
    path = "/" + url.split("/", 3)[3]
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers=AUTH)
    resp = conn.getresponse()
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events, event, data = [], "", []
    while line := resp.readline():
        line = line.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            events.append((time.monotonic(), event, "\n".join(data)))
            event, data = "", []
    conn.close()
    return events


async def start_serving(runner, handler: str, kind: str = "map", timeout: str = "10s",
                        replicas: int = 1) -> str:
    port = free_port()
    serving = {"port": port, "host": "127.0.0.1", "auth": {"token": "s3cret"}, "requestTimeout": timeout,
               "msgIdHeader": "X-Request-Key"}
    runner.write([{"name": "in", "source": {"serving": serving}},
                  {"name": "work", "udf": {kind: {"handler": handler}, "retry": {"attempts": 1}}},
                  {"name": "out", "sink": {"serve": {}}}],
                 [{"from": "in", "to": "work"},
                  {"from": "work", "to": "out", "conditions": {"tags": {"operator": "not", "values": ["lost"]}}}])
    await runner.start_all()
    for i in range(1, replicas):
        runner.start("in", replica=str(i))
    await wait_for(lambda: ready(port), 30, "the serving source to listen")
    return f"http://127.0.0.1:{port}"


def spec(serving: dict) -> dict:
    return {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
            "spec": {"vertices": [{"name": "in", "source": {"serving": serving}},
                                  {"name": "out", "sink": {"serve": {}}}],
                     "edges": [{"from": "in", "to": "out"}]}}


def test_serving_config_defaults_and_checks():
    p = parse_pipeline(spec({"auth": {"token": {"secretRef": {"name": "s", "key": "token"}}}}), check_handlers=False)
    cfg = p.vertex("in").source.config
    assert (cfg.port, cfg.request_timeout, cfg.msg_id_header) == (8080, 30.0, None)
    assert serving_pipeline(p) and bucket_ttl(p) == 300.0
    p = parse_pipeline(spec({"requestTimeout": "10m", "msgIdHeader": "X-Request-Key"}), check_handlers=False)
    assert p.vertex("in").source.config.request_timeout == 600.0 and bucket_ttl(p) == 1200.0
    with pytest.raises(SpecError) as err:
        parse_pipeline(spec({"msgIdHeader": "X Key", "requestTimeout": "2h"}), check_handlers=False)
    assert [path for path, _ in err.value.problems] == ["spec.vertices[0].source.serving.requestTimeout",
                                                        "spec.vertices[0].source.serving.msgIdHeader"]


def test_completion_rule_closes_parts_through_splits_results_and_errors():
    state = RequestState()
    state.apply("r1.q", b"")
    assert state.accepted and not state.complete
    state.apply("r1.s.0", b"2")  # a flatmap: two parts
    state.apply("r1.r.0.1", b"b")
    assert not state.complete
    state.apply("r1.s.0.0", b"0")  # the first part dropped further on
    assert state.complete and state.ordered_results() == [b"b"] and state.error() is None
    failed = RequestState()
    failed.apply("r2.e.0", b'{"error": "ValueError: x", "vertex": "work"}')
    assert failed.complete and failed.error() == {"error": "ValueError: x", "vertex": "work"}
    stream = RequestState()
    for i in (2, 0, 10, 1):
        stream.apply(f"r3.r.0.{i}", str(i).encode())
    stream.apply("r3.s.0", b"11")
    assert not stream.complete and stream.ordered_results() == [b"0", b"1", b"2", b"10"]
    big = RequestState()  # an answer keeps at most MAX_RESULTS values; the rest still close their parts
    big.apply("r4.s.0", str(MAX_RESULTS + 5).encode())
    for i in range(MAX_RESULTS + 5):
        big.apply(f"r4.r.0.{i}", b"x")
    assert big.complete and len(big.ordered_results()) == MAX_RESULTS and len(big.truncated) == 5


async def test_sync_map_flatmap_drop_filter_error_and_auth(runner):
    base = await start_serving(runner, "tests.vertices.serving_udfs:answer")
    assert await sync(base, b"hello") == (200, {"complete": True, "results": ["HELLO"]})
    assert await sync(base, b"words a bb ccc") == (200, {"complete": True, "results": ["a", "bb", "ccc"]})
    # Outputs no edge takes are no part of the answer (and do not keep it waiting).
    assert await sync(base, b"words -x a -y") == (200, {"complete": True, "results": ["a"]})
    assert await sync(base, b"words -x -y") == (200, {"complete": True, "results": []})
    assert await sync(base, b"words z -y") == (200, {"complete": True, "results": ["z"]})
    started = time.monotonic()
    assert await sync(base, b"drop") == (200, {"complete": True, "results": []})
    assert await sync(base, b"filter") == (200, {"complete": True, "results": []})
    assert time.monotonic() - started < 5  # answered, not timed out (requestTimeout is 10 s)
    assert await sync(base, b"fail 7") == (500, {
        "complete": True, "results": [], "error": "ValueError: cannot answer 'fail 7'", "vertex": "work"})
    # 20 at once: each gets its own answer.
    answers = await asyncio.gather(*(sync(base, f"w{i}".encode()) for i in range(20)))
    assert answers == [(200, {"complete": True, "results": [f"W{i}"]}) for i in range(20)]
    for token in (None, "Bearer nope"):
        headers = {"Authorization": token or ""}
        status, doc, _ = await acall("POST", f"{base}/v1/process/sync", b"x", headers)
        assert (status, doc) == (401, {"error": "missing or wrong bearer token"})
        assert (await acall("GET", f"{base}/v1/process/fetch?id=abc", None, headers))[:2] == (
            401, {"error": "missing or wrong bearer token"})


async def test_async_fetch_retry_key_and_timeout(runner, nc):
    base = await start_serving(runner, "tests.vertices.serving_udfs:answer", timeout="1s")
    status, doc, _ = await acall("POST", f"{base}/v1/process/async", b"words x y")
    assert status == 202 and set(doc) == {"id"}
    rid = doc["id"]

    async def fetched() -> dict | None:
        status, doc, _ = await acall("GET", f"{base}/v1/process/fetch?id={rid}")
        assert status == 200
        return doc if doc["complete"] else None

    assert await wait_for(fetched, 20, "the async request to complete") == {
        "id": rid, "complete": True, "results": ["x", "y"]}
    assert (await acall("GET", f"{base}/v1/process/fetch?id=nosuchrequest"))[0] == 404
    assert (await acall("GET", f"{base}/v1/process/fetch?id=bad.id"))[0] == 400
    # A client retry with the same msgIdHeader value is the same request: one message, one answer.
    key = {"X-Request-Key": "order-17"}
    first = await acall("POST", f"{base}/v1/process/sync", b"again", key)
    second = await acall("POST", f"{base}/v1/process/sync", b"again", key)
    assert first[:2] == second[:2] and first[:2][0] == 200 and first[1]["results"] == ["AGAIN"]
    stored = (await nc.jetstream().stream_info(f"nf_{runner.name}_work")).state.last_seq
    assert stored == 2  # "words x y" and "again" once
    # The middle vertex down when a request comes, then started again: the request completes.
    runner.kill("work")
    doc = (await acall("POST", f"{base}/v1/process/async", b"words after restart"))[1]
    rid = doc["id"]
    runner.start("work")
    assert await wait_for(fetched, 30, "the request to complete after the restart") == {
        "id": rid, "complete": True, "results": ["after", "restart"]}
    # Slower than requestTimeout: 504 with what came so far (nothing).
    started = time.monotonic()
    status, doc = await sync(base, b"slow")
    assert (status, doc) == (504, {"complete": False, "results": [],
                                   "error": "no complete result within requestTimeout (1s)"})
    assert 0.9 < time.monotonic() - started < 3


async def test_sse_streams_each_item_of_a_map_stream(runner):
    base = await start_serving(runner, "tests.vertices.serving_udfs:tokens", kind="mapStream")
    status, doc, _ = await acall("POST", f"{base}/v1/process/async", b"the quick brown fox")
    assert status == 202
    events = await asyncio.to_thread(read_sse, f"{base}/v1/process/sse?id={doc['id']}")
    assert [(e, d) for _, e, d in events] == [
        ("result", "the"), ("result", "quick"), ("result", "brown"), ("result", "fox"),
        ("done", json.dumps({"id": doc["id"], "complete": True}))]
    # Streamed as produced (100 ms apart), not all at the end.
    assert events[3][0] - events[0][0] > 0.15
    assert await sync(base, b"one two") == (200, {"complete": True, "results": ["one", "two"]})


async def test_two_replicas_of_the_source_both_answer(runner):
    base = await start_serving(runner, "tests.vertices.serving_udfs:answer", replicas=2)
    await wait_for(lambda: "serving source in on" in runner.log("in#1"), 30, "the second replica to listen")

    async def one(i: int) -> tuple[int, dict, str]:
        return await acall("POST", f"{base}/v1/process/sync", f"r{i}".encode())

    replies = []
    for _ in range(3):  # the kernel spreads new connections over the two listening sockets
        replies += await asyncio.gather(*(one(i) for i in range(len(replies), len(replies) + 20)))
        if len({r[2] for r in replies}) == 2:
            break
    assert [(s, d["results"]) for s, d, _ in replies] == [(200, [f"R{i}"]) for i in range(len(replies))]
    assert len({r[2] for r in replies}) == 2
    # An async request taken by one replica is fetched from whichever answers.
    doc = (await acall("POST", f"{base}/v1/process/async", b"words p q"))[1]
    rid = doc["id"]

    async def complete() -> set[str] | None:
        seen = set()
        for _ in range(10):
            status, doc, replica = await acall("GET", f"{base}/v1/process/fetch?id={rid}")
            if status != 200 or not doc["complete"]:
                return None
            assert doc["results"] == ["p", "q"]
            seen.add(replica)
        return seen

    assert await wait_for(complete, 20, "the async request to complete")
