"""Every source: an upstream record natsflow cannot store (over the server's max_payload once the
envelope headers are added, a header it cannot carry) goes to the source's dead-letter stream
`nf_<p>_<v>_dlq` and is acknowledged upstream; the records around it flow, nothing is re-read
forever and the source does not crash."""

from __future__ import annotations

import json
import re
import uuid

import aio_pika
import aiomqtt
import redis.asyncio as aioredis

from framework.transport.client import publish_many
from framework.transport.settings import NatsSettings
from tests.conftest import Collector, wait_for

MAX_PAYLOAD = 1024 * 1024  # the test server's (nats-server's default)
GOOD = 200
OVERSIZE = b"z" * (MAX_PAYLOAD - 20)  # fits upstream as it is; not with natsflow's envelope headers


def pipeline(runner, source: dict) -> None:
    runner.write([{"name": "in", "source": source}, {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}])


async def dead_letters(runner, nc, n: int) -> dict[int, object]:
    """The source's dead letters by the `n` of the record's JSON payload or its length."""
    stream = f"nf_{runner.name}_in_dlq"
    await wait_for(lambda: runner.stream_messages(nc, stream), 30, "source dead letters")
    psub = await nc.jetstream().pull_subscribe("", durable=None, stream=stream)
    letters = await psub.fetch(n + 1, timeout=3)
    await psub.unsubscribe()
    assert len(letters) == n
    return letters


async def flows_around(runner, nc, sink: Collector, good: set[int]) -> None:
    await sink.wait_count(len(good), 60)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    got = [json.loads(m.data)["n"] for m in sink.msgs]
    assert sorted(got) == sorted(good) and len(got) == len(set(got))
    assert runner.procs["in"].poll() is None, runner.log("in")
    assert "Traceback" not in runner.log("in")


def assert_truncated(letter, record: str) -> None:
    error = letter.headers["Nf-Error"]
    assert re.match(rf"UnstorableRecord: record {re.escape(record)} is 104\d{{4}} bytes with headers", error), error
    assert f"bytes with headers, over the server's max_payload {MAX_PAYLOAD}; dead letter: payload truncated " \
           f"from {len(OVERSIZE)} to {len(letter.data)} bytes" in error, error
    assert letter.headers["Nf-Error-Vertex"] == "in" and 0 < len(letter.data) < len(OVERSIZE)


async def test_jetstream_source_dead_letters_what_it_cannot_store(runner, nc):
    """A header name outside the token set crash-looped the source at 79bb269 and blocked
    everything behind it; a non-UTF-8 header value and an oversize record are the same class."""
    js = nc.jetstream()
    src = f"SRC_{runner.name}"
    subject = f"{runner.name}.src"
    await js.add_stream(name=src, subjects=[subject])
    items = []
    for n in range(GOOD):
        items.append((subject, "", json.dumps({"n": n}).encode(), b"NATS/1.0\r\nX-Trace: t\r\n\r\n"))
        if n == 10:
            items.append((subject, "", b'{"n": -1}', b"NATS/1.0\r\nX(bad): 1\r\n\r\n"))  # upstream seq 12
        if n == 20:
            items.append((subject, "", b'{"n": -2}', b"NATS/1.0\r\nX-Raw: \xff\xfe\r\n\r\n"))  # seq 23
        if n == 30:
            items.append((subject, "", OVERSIZE, None))  # seq 34
    writer = await NatsSettings(url=runner.url).connect("upstream")
    try:
        await publish_many(writer, items)
        await writer.flush()
    finally:
        await writer.close()
    await wait_for(lambda: runner.stream_messages(nc, src), 10, "upstream stored")
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, {"jetstream": {"stream": src}})
    await runner.start_all()
    await flows_around(runner, nc, sink, set(range(GOOD)))
    letters = {m.headers["Nf-Id"]: m for m in await dead_letters(runner, nc, 3)}
    assert letters[f"{src}:12"].headers["Nf-Error"] == (
        f"UnstorableRecord: record {src}:12: header name 'X(bad)' is not an HTTP token; "
        "dead letter: header 'X(bad)' renamed 'X_bad_'")
    assert letters[f"{src}:23"].headers["Nf-Error"] == (
        f"UnstorableRecord: record {src}:23: header 'X-Raw' value is not UTF-8; "
        "dead letter: value of header 'X-Raw' escaped")
    assert letters[f"{src}:23"].headers["X-Raw"] == "\\xff\\xfe"
    assert_truncated(letters[f"{src}:34"], f"{src}:34")
    await wait_for(lambda: runner.source_consumed(nc, src), 10, "every upstream message acked")


async def test_rabbitmq_source_dead_letters_an_oversize_message(runner, nc, rabbitmq_url):
    queue = f"nf-test-{uuid.uuid4().hex[:10]}"
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        for n in range(GOOD):
            await channel.default_exchange.publish(
                aio_pika.Message(json.dumps({"n": n}).encode(), message_id=f"m-{n}", headers={"we(ird)": "ok"}),
                routing_key=queue)
            if n == 50:
                await channel.default_exchange.publish(aio_pika.Message(OVERSIZE, message_id="big"), routing_key=queue)
        sink = await Collector().start(nc, f"{runner.name}.out")
        pipeline(runner, {"rabbitmq": {"url": rabbitmq_url, "queue": queue}})
        await runner.start_all()
        await flows_around(runner, nc, sink, set(range(GOOD)))
        assert sink.msgs[0].headers["we_ird_"] == "ok"  # a name AMQP allows is escaped, as documented
        (letter,) = await dead_letters(runner, nc, 1)
        assert_truncated(letter, f"{queue}:big")
        assert (await channel.declare_queue(queue, passive=True)).declaration_result.message_count == 0
        await channel.queue_delete(queue)
    finally:
        await connection.close()


async def test_mqtt_source_dead_letters_an_oversize_message(runner, nc, mqtt_url):
    topic = f"nf-test/{uuid.uuid4().hex[:10]}"
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, {"mqtt": {"url": mqtt_url, "topic": topic, "clientId": f"nf-{runner.name}"}})
    await runner.start_all()
    await wait_for(lambda: "subscribed to" in runner.log("in"), 20, "the mqtt source to subscribe")
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"pub-{runner.name}") as client:
        for n in range(GOOD):
            await client.publish(topic, json.dumps({"n": n}).encode(), qos=1)
            if n == 50:
                await client.publish(topic, OVERSIZE, qos=1)
    await flows_around(runner, nc, sink, set(range(GOOD)))
    (letter,) = await dead_letters(runner, nc, 1)
    assert letter.headers["Nf-Error"].startswith(f"UnstorableRecord: record {topic}:")
    assert "payload truncated" in letter.headers["Nf-Error"]


async def test_redis_streams_source_dead_letters_an_oversize_entry(runner, nc):
    stream = f"nf-test-{uuid.uuid4().hex[:10]}"
    client = aioredis.from_url("redis://127.0.0.1:6379")
    try:
        ids = {}
        for n in range(GOOD):
            await client.xadd(stream, {"value": json.dumps({"n": n})})
            if n == 50:
                ids["big"] = (await client.xadd(stream, {"value": OVERSIZE})).decode()
        sink = await Collector().start(nc, f"{runner.name}.out")
        pipeline(runner, {"redisStreams": {"url": "redis://127.0.0.1:6379", "stream": stream, "group": "g"}})
        await runner.start_all()
        await flows_around(runner, nc, sink, set(range(GOOD)))
        (letter,) = await dead_letters(runner, nc, 1)
        assert_truncated(letter, f"{stream}:{ids['big']}")
        pending = await client.xpending(stream, "g")
        assert pending["pending"] == 0  # XACKed
    finally:
        await client.delete(stream)
        await client.aclose()


async def test_kafka_source_dead_letters_an_oversize_record(runner, nc, kafka_broker):
    from aiokafka import AIOKafkaProducer  # noqa: PLC0415

    from tests.vertices.test_kafka import create_topic  # noqa: PLC0415

    topic = await create_topic(kafka_broker.bootstrap, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", max_request_size=4 * MAX_PAYLOAD)
    await producer.start()
    try:
        for n in range(GOOD):
            await producer.send_and_wait(topic, json.dumps({"n": n}).encode(), headers=[("we(ird)", b"ok")])
            if n == 50:
                await producer.send_and_wait(topic, OVERSIZE)  # offset 51
    finally:
        await producer.stop()
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, {"kafka": {"brokers": [kafka_broker.bootstrap], "topic": topic, "consumerGroup": runner.name,
                                "config": {"fetch_max_bytes": 8 * MAX_PAYLOAD,
                                           "max_partition_fetch_bytes": 4 * MAX_PAYLOAD}}})
    await runner.start_all()
    await flows_around(runner, nc, sink, set(range(GOOD)))
    assert sink.msgs[0].headers["we_ird_"] == "ok"
    (letter,) = await dead_letters(runner, nc, 1)
    assert_truncated(letter, f"{topic}:0:51")


async def test_sinks_refuse_a_datum_they_could_never_publish(runner, nc):
    """A datum that fits its buffer but not the nats/jetstream sink's own envelope (its long id is
    written twice there) goes to the sink's dead-letter stream; the others are written once."""
    stream = f"OUT_{runner.name}"
    runner.write([{"name": "in", "source": {"nats": {"subject": f"{runner.name}.unused"}}},
                  {"name": "js", "sink": {"jetstream": {"stream": stream, "subject": f"{runner.name}.stored"}}},
                  {"name": "core", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "js"}, {"from": "in", "to": "core"}])
    await runner.provision()
    long_id = "i" * 3000
    big = b"b" * (MAX_PAYLOAD - 3200)  # with one copy of the id it fits, with two it does not
    items = []
    for to in ("js", "core"):
        for n in range(GOOD):
            head = f"NATS/1.0\r\nNats-Msg-Id: feed:{n}\r\nNf-Id: id-{n}\r\nNf-Event-Time: 1\r\n\r\n".encode()
            items.append((f"nf.{runner.name}.{to}.in", "", json.dumps({"n": n}).encode(), head))
        head = f"NATS/1.0\r\nNats-Msg-Id: feed:big\r\nNf-Id: {long_id}\r\nNf-Event-Time: 1\r\n\r\n".encode()
        items.append((f"nf.{runner.name}.{to}.in", "", big, head))
    writer = await NatsSettings(url=runner.url).connect("feed")
    try:
        await publish_many(writer, items)
        await writer.flush()
    finally:
        await writer.close()
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.start("js")
    runner.start("core")
    await sink.wait_count(GOOD, 30)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(json.loads(m.data)["n"] for m in sink.msgs) == list(range(GOOD))
    assert await runner.stream_messages(nc, stream) == GOOD
    for to in ("js", "core"):
        dlq = f"nf_{runner.name}_{to}_dlq"
        await wait_for(lambda: runner.stream_messages(nc, dlq), 10, f"{to} dead letter")
        letter = await nc.jetstream().get_msg(dlq, 1)
        assert letter.headers["Nf-Error"].startswith("Unpublishable: 10") and letter.headers["Nf-Id"] == long_id
        # The dead letter's own headers (Nf-Error) take room too: a payload cut to fit says so.
        assert letter.data == big[:len(letter.data)]
        assert len(letter.data) == len(big) or \
            f"payload truncated from {len(big)} to {len(letter.data)} bytes" in letter.headers["Nf-Error"]
