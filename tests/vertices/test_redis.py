"""The `redisStreams` source and the `redis` sink against real Redis: the machine's server on 6379,
and for "Redis down, then back" a private redis-server on a free loopback port that the test
starts late (the shared server is never stopped)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import uuid

import pytest
import pytest_asyncio
import redis.asyncio as aioredis

from framework.local.embedded import free_port
from tests.conftest import Collector, wait_for
from tests.vertices.test_http_sink import Receiver, all_through, feed, pipeline
from tests.vertices.test_sink_retry import metric

URL = "redis://127.0.0.1:6379/0"


@pytest_asyncio.fixture
async def r():
    client = aioredis.from_url(URL)
    name = "nf-" + uuid.uuid4().hex[:10]
    yield client, name
    await client.delete(name, name + "-list")
    await client.aclose()


def source_pipeline(runner, stream: str, **extra) -> None:
    runner.write([{"name": "in", "source": {"redisStreams": {"url": URL, "stream": stream, "group": "g", **extra}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}], limits={"readBatchSize": 200})


async def add(client, stream: str, start: int, n: int) -> list[bytes]:
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + n):
        pipe.xadd(stream, {"value": f"v{i}", "key": f"k{i % 4}", "trace": f"t{i}", "Nats-Msg-Id": "x", "a b": "c"})
    return await pipe.execute()


async def test_redis_streams_source_exactly_n_with_keys_headers_event_time(runner, nc, r):
    client, stream = r
    out = await Collector().start(nc, f"{runner.name}.out")
    ids = await add(client, stream, 0, 1000)
    await client.xadd(stream, {"a": "1", "b": "x"})  # no `value` field: stored whole as JSON
    source_pipeline(runner, stream)
    await runner.provision()
    port = free_port()
    runner.start("out")
    runner.start("in", NATSFLOW_METRICS_PORT=str(port))
    await out.wait_count(1001, 60)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert len(out.msgs) == 1001 and len(set(out.ids)) == 1001
    # The group's backlog as Redis reports it, exported for scaling.
    await wait_for(lambda: metric(port, "source_upstream_backlog", None, state="lag") == 0
                   and metric(port, "source_upstream_backlog", None, state="pending") == 0, 10, "backlog gauges at 0")
    by_value = {m.data: m for m in out.msgs}
    assert set(by_value) == {f"v{i}".encode() for i in range(1000)} | {b'{"a":"1","b":"x"}'}
    m = by_value[b"v5"]
    eid = ids[5].decode()
    assert m.headers["Nf-Id"] == f"{stream}:{eid}" and json.loads(m.headers["Nf-Keys"]) == ["k1"]
    assert {k: v for k, v in m.headers.items() if not k.startswith(("Nf-", "Nats-"))} == {"trace": "t5"}
    assert m.headers["Nats-Msg-Id"] == f"{stream}:{eid}"  # the nats sink's id: the data id, not the field
    assert int(m.headers["Nf-Event-Time"]) == int(eid.split("-")[0])
    groups = await client.xinfo_groups(stream)
    assert groups[0]["pending"] == 0 and groups[0]["lag"] == 0


async def test_redis_streams_source_killed_mid_stream_no_loss_no_duplicates(runner, nc, r):
    client, stream = r
    out = await Collector().start(nc, f"{runner.name}.out")
    total = 4000
    source_pipeline(runner, stream)
    await runner.start_all()

    async def produce() -> None:
        for start in range(0, total, 100):
            await add(client, stream, start, 100)
            await asyncio.sleep(0.01)  # a steady stream, not one burst

    producer = asyncio.create_task(produce())
    await out.wait_count(800, 60)
    runner.kill("in")
    killed_at = len(out.msgs)
    runner.start("in")
    await producer
    await out.wait_count(total, 90)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert killed_at < total, killed_at
    assert len(out.msgs) == total, f"{len(out.msgs) - len(set(out.ids))} duplicates"
    assert sorted(m.data for m in out.msgs) == sorted(f"v{i}".encode() for i in range(total))
    assert (await client.xinfo_groups(stream))[0]["pending"] == 0


async def test_redis_sink_stream_and_list_exact(runner, nc, r):
    client, key = r
    stream = await feed(nc, runner, 700, lambda i: f"m{i}".encode(), keys=lambda i: [f"k{i % 2}"])
    runner.write([{"name": "in", "source": {"jetstream": {"stream": stream}}},
                  {"name": "tostream", "sink": {"redis": {"url": URL, "stream": key}}},
                  {"name": "tolist", "sink": {"redis": {"url": URL, "list": key + "-list"}}}],
                 [{"from": "in", "to": "tostream"}, {"from": "in", "to": "tolist"}], limits={"readBatchSize": 100})
    await runner.start_all()
    await wait_for(lambda: all_through(nc, runner, stream, 700), 60, "700 records through")
    entries = await client.xrange(key)
    assert len(entries) == 700
    fields = {e[1][b"value"]: e[1] for e in entries}
    assert set(fields) == {f"m{i}".encode() for i in range(700)}
    assert fields[b"m3"][b"id"] == f"{stream}:4".encode() and json.loads(fields[b"m3"][b"keys"]) == ["k1"]
    assert int(fields[b"m3"][b"eventTime"]) > 1_600_000_000_000
    assert sorted(await client.lrange(key + "-list", 0, -1)) == sorted(f"m{i}".encode() for i in range(700))


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
async def test_redis_sink_down_then_back_loses_nothing(runner, nc, tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    stream = await feed(nc, runner, 500)
    pipeline(runner, stream, {"redis": {"url": url, "list": "out"}})
    await runner.start_all()
    await wait_for(lambda: runner.log("out").count("ConnectionError") >= 3, 30, "three failed writes")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    client = aioredis.from_url(url)
    try:
        await wait_for(lambda: all_through(nc, runner, stream, 500), 60, "500 records through after Redis is up")
        assert sorted(await client.lrange("out", 0, -1)) == sorted(f"m{i}".encode() for i in range(500))
    finally:
        await client.aclose()
        server.terminate()
        server.wait(10)


async def test_redis_streams_source_takes_over_entries_a_dead_consumer_left(runner, nc, r):
    client, stream = r
    out = await Collector().start(nc, f"{runner.name}.out")
    await add(client, stream, 0, 300)
    await client.xgroup_create(stream, "g", id="0")
    ghost = await client.xreadgroup("g", "ghost", {stream: ">"}, count=120)  # read, never acked
    assert len(ghost[0][1]) == 120
    source_pipeline(runner, stream, claimIdle="1s")
    await runner.start_all()
    await out.wait_count(300, 60)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert len(out.msgs) == 300 and sorted(m.data for m in out.msgs) == sorted(f"v{i}".encode() for i in range(300))
    await wait_for(lambda: runner.log("in").count("took over 120 entries") == 1, 10, "the take-over log line")
    assert (await client.xinfo_groups(stream))[0]["pending"] == 0


async def test_redis_streams_backlog_reported_while_backed_up(runner, nc, r):
    client, stream = r
    state = {"up": False}
    receiver = await Receiver(lambda body: 200 if state["up"] else 503).start()
    port = free_port()
    try:
        await add(client, stream, 0, 1200)
        runner.write([{"name": "in", "source": {"redisStreams": {"url": URL, "stream": stream, "group": "g"}}},
                      {"name": "out", "sink": {"http": {"url": receiver.url}}}],
                     [{"from": "in", "to": "out"}],
                     limits={"readBatchSize": 50, "bufferMaxLength": 200, "bufferUsageLimit": 50})
        await runner.provision()
        runner.start("out")
        runner.start("in", NATSFLOW_METRICS_PORT=str(port))
        # The sink is down, its buffer is full, the source waits: Redis still holds the rest.
        await wait_for(lambda: (metric(port, "source_upstream_backlog", None, state="lag") or 0) >= 1200 - 500,
                       30, "the group's lag while backed up")
        assert (metric(port, "source_upstream_backlog", None, state="pending") or 0) > 0
        assert receiver.stored == []
        state["up"] = True
        await wait_for(lambda: len(receiver.stored) >= 1200, 60, "1200 requests")
        await wait_for(lambda: metric(port, "source_upstream_backlog", None, state="lag") == 0
                       and metric(port, "source_upstream_backlog", None, state="pending") == 0, 10, "backlog at 0")
        assert sorted(b for b, _ in receiver.stored) == sorted(f"v{i}".encode() for i in range(1200))
    finally:
        await receiver.stop()


async def test_redis_streams_source_keeps_going_when_the_stream_is_deleted(runner, nc, r):
    client, stream = r
    out = await Collector().start(nc, f"{runner.name}.out")
    await add(client, stream, 0, 100)
    source_pipeline(runner, stream)
    await runner.start_all()
    await out.wait_count(100, 30)
    await client.delete(stream)  # the stream and its group go; the source is blocked reading it
    await add(client, stream, 100, 100)  # a new stream under the same name
    await out.wait_count(200, 30)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(m.data for m in out.msgs) == sorted(f"v{i}".encode() for i in range(200))
    assert "group g is gone" in runner.log("in")
    assert (await client.xinfo_groups(stream))[0]["pending"] == 0
