"""The Kafka source and sink as real vertex processes against a Tansu broker (Kafka protocol)."""

from __future__ import annotations

import json
import uuid
from collections import Counter

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from framework.isb.names import consumer_name
from framework.local.embedded import free_port
from tests.conftest import Collector, wait_for
from tests.vertices.conftest import TcpProxy, arrives_exactly_once, backlog_while_full, numbers, scrape_gauge
from tests.vertices.test_http_sink import all_through, feed, pipeline

BASE_MS = 1_700_000_000_000
# A SIGKILLed member stays in the group until its session times out; keep that short in tests.
FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300}


async def create_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return topic


async def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, json.dumps({"n": n}).encode(), key=f"k{n % 5}".encode(),
                                       headers=[("trace", f"t{n}".encode())], timestamp_ms=BASE_MS + n)
                   for n in range(start, start + count)]
        for f in futures:
            await f
    finally:
        await producer.stop()


async def consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"check-{uuid.uuid4().hex[:6]}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got: list = []
    try:
        async def more() -> bool:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                got.extend(records)
            return len(got) >= expect
        await wait_for(more, timeout, f"{expect} records in {topic} (have {len(got)})", interval=0)
        # Anything beyond `expect` (a duplicate) would arrive in the same reads; look once more.
        for records in (await consumer.getmany(timeout_ms=500)).values():
            got.extend(records)
    finally:
        await consumer.stop()
    return got


def source_pipeline(runner, kafka_broker, topic: str, group: str, limits: dict | None = None) -> None:
    runner.write([{"name": "in", "source": {"kafka": {"brokers": [kafka_broker.bootstrap], "topic": topic,
                                                      "consumerGroup": group, "config": FAST_GROUP}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}], limits=limits)


async def committed(bootstrap: str, topic: str, group: str) -> dict[int, int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(3)}
    finally:
        await consumer.stop()


async def test_kafka_source_exact_with_keys_headers_event_time_and_commits(runner, nc, kafka_broker):
    total = 2000
    topic = await create_topic(kafka_broker.bootstrap)
    await produce(kafka_broker.bootstrap, topic, 0, total)
    sink = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, kafka_broker, topic, f"g-{runner.name}")
    await runner.start_all()
    await sink.wait_count(total, timeout=60)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    counts = numbers(sink)
    assert set(counts) == set(range(total)) and len(sink.msgs) == total
    ids = sink.ids
    assert len(set(ids)) == total and all(i.startswith(f"{topic}:") for i in ids)
    m = next(m for m in sink.msgs if json.loads(m.data)["n"] == 7)
    assert json.loads(m.headers["Nf-Keys"]) == ["k2"]
    assert m.headers["trace"] == "t7"
    assert int(m.headers["Nf-Event-Time"]) == BASE_MS + 7
    # Offsets were committed after the records were stored: all of them, nothing beyond.
    want = {}
    for i in ids:
        _, p, o = i.rsplit(":", 2)
        want[int(p)] = max(want.get(int(p), 0), int(o) + 1)

    async def all_committed() -> bool:
        return await committed(kafka_broker.bootstrap, topic, f"g-{runner.name}") == want

    await wait_for(all_committed, 20, f"committed offsets {want}")


async def test_kafka_source_sigkill_restart_loses_and_duplicates_nothing(runner, nc, kafka_broker):
    total = 30_000
    topic = await create_topic(kafka_broker.bootstrap)
    sink = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, kafka_broker, topic, f"g-{runner.name}")
    await runner.start_all()
    await produce(kafka_broker.bootstrap, topic, 0, total // 2)
    await sink.wait_count(2000, timeout=60)
    runner.kill("in")
    assert len(sink.msgs) < total // 2, "the kill came too late to test anything"
    await produce(kafka_broker.bootstrap, topic, total // 2, total - total // 2)
    runner.start("in")
    await arrives_exactly_once(sink, runner, nc, total)


async def test_kafka_source_reports_lag_while_backed_up(runner, nc, kafka_broker):
    total = 3000
    topic = await create_topic(kafka_broker.bootstrap)
    await produce(kafka_broker.bootstrap, topic, 0, total)
    sink = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, kafka_broker, topic, f"g-{runner.name}",
                    limits={"bufferMaxLength": 400, "bufferUsageLimit": 50})
    await runner.provision()
    port = free_port()
    runner.start("in", NATSFLOW_METRICS_PORT=str(port))  # the sink is not running: its buffer fills

    def lag() -> float | None:
        return scrape_gauge(port, "source_upstream_backlog", state="lag")

    await backlog_while_full(runner, nc, port, total, "a positive lag")
    runner.start("out")
    await sink.wait_count(total, timeout=60)
    await wait_for(lambda: lag() == 0, 30, "the lag to fall to 0 once everything is read")
    assert len(sink.msgs) == total


async def test_kafka_source_rebalance_between_replicas_duplicates_nothing(runner, nc, kafka_broker):
    """A second replica joins mid-stream (partitions move), then the first is SIGKILLed (its
    partitions move again, from the last committed offsets): every record arrives exactly once."""
    total = 24_000
    topic = await create_topic(kafka_broker.bootstrap, partitions=4)
    sink = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, kafka_broker, topic, f"g-{runner.name}")
    await runner.start_all()
    await produce(kafka_broker.bootstrap, topic, 0, 8000)
    await sink.wait_count(1000, timeout=60)
    runner.start("in", replica="b")
    await wait_for(lambda: "kafka source in:" in runner.log("in#b"), 30, "the second replica to start")
    await produce(kafka_broker.bootstrap, topic, 8000, 8000)
    await sink.wait_count(9000, timeout=60)
    runner.kill("in")
    await produce(kafka_broker.bootstrap, topic, 16000, total - 16000)
    await arrives_exactly_once(sink, runner, nc, total)


async def test_kafka_source_waits_for_brokers_that_are_down_at_start(tansu_factory, runner, nc):
    total = 1000
    broker = tansu_factory()  # its port is reserved but nothing listens yet
    sink = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, broker, "late-topic", f"g-{runner.name}")
    await runner.start_all()
    await wait_for(lambda: "retrying in" in runner.log("in"), 30, "the source to report the brokers down")
    broker.start()
    await produce(broker.bootstrap, "late-topic", 0, total)
    await sink.wait_count(total, timeout=60)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert set(numbers(sink)) == set(range(total)) and len(sink.msgs) == total


def sink_pipeline(runner, bootstrap: str, topic: str, total: int, config: dict | None = None) -> None:
    runner.write([{"name": "in", "source": {"generator": {"total": total, "rpu": 5000, "duration": "100ms",
                                                          "keyCount": 4}}},
                  {"name": "out", "sink": {"kafka": {"brokers": [bootstrap], "topic": topic, "setKey": True,
                                                     "config": config or {}}}}],
                 [{"from": "in", "to": "out"}])


async def test_kafka_sink_writes_exact_records_with_keys_and_ids(runner, nc, kafka_broker):
    total = 3000
    topic = await create_topic(kafka_broker.bootstrap)
    sink_pipeline(runner, kafka_broker.bootstrap, topic, total)
    await runner.start_all()
    got = await consume_all(kafka_broker.bootstrap, topic, total, timeout=60)
    seqs = Counter(json.loads(r.value)["seq"] for r in got)
    assert set(seqs) == set(range(total)) and len(got) == total
    r = next(r for r in got if json.loads(r.value)["seq"] == 6)
    assert r.key == b"key-2"
    headers = dict(r.headers)
    assert headers["Nf-Id"].decode() == json.loads(r.value)["id"]
    assert abs(r.timestamp - json.loads(r.value)["createdTs"]) < 1000
    await wait_for(lambda: runner.drained(nc), 20, "the sink's buffer to drain")


async def test_kafka_sink_dead_letters_a_too_large_record_and_writes_the_rest_once(runner, nc, kafka_broker):
    topic = await create_topic(kafka_broker.bootstrap)
    stream = await feed(nc, runner, 60, lambda i: (b"x" * 20_000) if i == 7 else f"m{i}".encode())
    pipeline(runner, stream, {"kafka": {"brokers": [kafka_broker.bootstrap], "topic": topic,
                                        "config": {"max_request_size": 10_000}}})
    await runner.start_all()
    got = await consume_all(kafka_broker.bootstrap, topic, 59)
    assert sorted(r.value for r in got) == sorted(f"m{i}".encode() for i in range(60) if i != 7)  # each once
    await wait_for(lambda: all_through(nc, runner, stream, 60), 30, "60 records through")
    dlq = f"nf_{runner.name}_out_dlq"
    [m] = await (await nc.jetstream().pull_subscribe(f"nfdlq.{runner.name}.out", durable=None, stream=dlq)).fetch(
        1, timeout=5)
    assert len(m.data) == 20_000 and m.headers["Nf-Error"].startswith("MessageSizeTooLargeError: ")


async def test_kafka_sink_broker_down_then_back_loses_nothing(tansu_factory, runner, nc):
    total = 2000
    broker = tansu_factory()  # its port is reserved but nothing listens yet
    topic = f"t-{uuid.uuid4().hex[:10]}"
    sink_pipeline(runner, broker.bootstrap, topic, total, {"request_timeout_ms": 3000})
    await runner.start_all()
    js = nc.jetstream()
    buffer = f"nf_{runner.name}_out"

    async def backed_up() -> bool:
        return (await js.stream_info(buffer)).state.messages == total

    await wait_for(backed_up, 60, f"{total} messages waiting in the sink's buffer")
    await wait_for(lambda: "KafkaConnectionError" in runner.log("out"), 30, "the sink to report failed writes")
    broker.start()
    got = await consume_all(broker.bootstrap, topic, total, timeout=90)
    seqs = Counter(json.loads(r.value)["seq"] for r in got)
    assert set(seqs) == set(range(total))
    assert [s for s, n in seqs.items() if n > 1] == [] and len(got) == total
    await wait_for(lambda: runner.drained(nc), 30, "the sink's buffer to drain")


async def test_kafka_sink_network_cut_mid_stream_loses_nothing(tansu_factory, runner, nc):
    """The sink's connection to the brokers is cut mid-stream for a few seconds, then restored:
    every record arrives; a batch that was in flight may be written twice (told apart by Nf-Id)."""
    total = 20_000
    proxy = TcpProxy(free_port())
    broker = tansu_factory(advertised_port=proxy.port)  # clients reach it only through the proxy
    proxy.target_port = broker.port
    broker.start()
    await proxy.start()
    topic = f"t-{uuid.uuid4().hex[:10]}"
    runner.write([{"name": "in", "source": {"generator": {"total": total, "rpu": 500, "duration": "100ms"}}},
                  {"name": "out", "sink": {"kafka": {"brokers": [broker.bootstrap], "topic": topic,
                                                     "config": {"request_timeout_ms": 3000}}}}],
                 [{"from": "in", "to": "out"}])
    await runner.start_all()
    js = nc.jetstream()

    async def acked(n: int) -> bool:
        info = await js.consumer_info(consumer_name(runner.name, "out"), consumer_name(runner.name, "out"))
        return info.ack_floor.stream_seq >= n

    await wait_for(lambda: acked(3000), 60, "3000 records written before the cut")
    await proxy.stop()
    errors = ("NodeNotReadyError", "KafkaConnectionError", "KafkaTimeoutError", "Unable connect")
    await wait_for(lambda: any(e in runner.log("out") for e in errors), 30, "the sink to meet the outage")
    assert not await acked(total), "the cut came too late to test anything"
    await proxy.start()
    got = await consume_all(broker.bootstrap, topic, total, timeout=120)
    seqs = Counter(json.loads(r.value)["seq"] for r in got)
    assert set(seqs) == set(range(total))
    assert len({dict(r.headers)["Nf-Id"] for r in got}) == total
    await wait_for(lambda: runner.drained(nc), 30, "the sink's buffer to drain")
    await proxy.stop()


async def test_kafka_config_typo_is_named(runner, kafka_broker):
    runner.write([{"name": "in", "source": {"kafka": {"brokers": [kafka_broker.bootstrap], "topic": "x",
                                                      "consumerGroup": "g", "config": {"sesion_timeout_ms": 1}}}},
                  {"name": "out", "sink": {"log": {}}}],
                 [{"from": "in", "to": "out"}])
    await runner.provision()
    proc = runner.start("in")
    await wait_for(lambda: proc.poll() is not None, 30, "the source to exit on a bad option")
    assert proc.returncode != 0
    assert "source.kafka.config: unknown AIOKafkaConsumer option(s) sesion_timeout_ms" in runner.log("in")


def test_kafka_spec_errors_name_the_field():
    from framework.spec import SpecError, parse_pipeline  # noqa: PLC0415

    def problems(source: dict, sink: dict | None = None) -> str:
        doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "k"},
               "spec": {"vertices": [{"name": "in", "source": source},
                                     {"name": "out", "sink": sink or {"log": {}}}],
                        "edges": [{"from": "in", "to": "out"}]}}
        try:
            parse_pipeline(doc)
        except SpecError as exc:
            return str(exc)
        return ""

    assert "spec.vertices[0].source.kafka.consumerGroup: Field required" in problems(
        {"kafka": {"brokers": ["b:9092"], "topic": "t"}})
    assert "spec.vertices[0].source.kafka.sasl.mechanism: Input should be 'plain', 'scram-sha-256' or " \
           "'scram-sha-512'" in problems({"kafka": {"brokers": ["b:9092"], "topic": "t", "consumerGroup": "g",
                                                    "sasl": {"mechanism": "gssapi", "username": "u",
                                                             "password": "p"}}})
    assert "spec.vertices[0].source.kafka.tls: certFile and keyFile go together" in problems(
        {"kafka": {"brokers": ["b:9092"], "topic": "t", "consumerGroup": "g", "tls": {"certFile": "c.pem"}}})
    assert "spec.vertices[1].sink.kafka.brokers: List should have at least 1 item" in problems(
        {"generator": {}}, {"kafka": {"brokers": [], "topic": "t"}})
    assert "spec.vertices[1].sink.kafka.setkey: unknown field" in problems(
        {"generator": {}}, {"kafka": {"brokers": ["b:9092"], "topic": "t", "setkey": True}})


def test_kafka_tls_and_sasl_map_to_client_options(tmp_path):
    import ssl  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    from vertices.kafka.client import client_options  # noqa: PLC0415
    from vertices.kafka.config import KafkaSourceConfig as KafkaSource  # noqa: PLC0415

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    cfg = KafkaSource.model_validate({
        "brokers": ["b:9093"], "topic": "t", "consumerGroup": "g",
        "tls": {"caFile": str(cert), "certFile": str(cert), "keyFile": str(key), "insecureSkipVerify": True},
        "sasl": {"mechanism": "scram-sha-512", "username": "u", "password": "p"},
        "config": {"session_timeout_ms": 7000}})
    opts = client_options(cfg, AIOKafkaConsumer, "source.kafka", group_id="g")
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"]) == ("u", "p")
    assert opts["session_timeout_ms"] == 7000 and opts["bootstrap_servers"] == ["b:9093"]
    context = opts["ssl_context"]
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    plain = client_options(KafkaSource.model_validate({"brokers": ["b:1"], "topic": "t", "consumerGroup": "g"}),
                           AIOKafkaConsumer, "source.kafka")
    assert plain["security_protocol"] == "PLAINTEXT" and "ssl_context" not in plain
