"""The RabbitMQ source as a real vertex process against the machine's RabbitMQ (127.0.0.1:5672)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import datetime, timezone

import aio_pika
import pytest_asyncio

from framework.local.embedded import free_port
from tests.conftest import Collector, wait_for
from tests.vertices.conftest import TcpProxy, arrives_exactly_once, backlog_while_full, numbers, scrape_gauge

BASE_S = 1_700_000_000


@pytest_asyncio.fixture
async def amqp(rabbitmq_url):
    connection = await aio_pika.connect(rabbitmq_url)
    channel = await connection.channel(publisher_confirms=True)
    queues: list[str] = []

    async def declare() -> str:
        name = f"nf-test-{uuid.uuid4().hex[:10]}"
        await channel.declare_queue(name, durable=True)
        queues.append(name)
        return name

    yield channel, declare
    for name in queues:
        await channel.queue_delete(name)
    await connection.close()


async def publish(channel, queue: str, start: int, count: int, with_id=lambda n: True) -> None:
    """Publish with confirms, 500 in flight at a time."""
    def message(n: int) -> aio_pika.Message:
        return aio_pika.Message(json.dumps({"n": n}).encode(), message_id=f"m-{n}" if with_id(n) else None,
                                headers={"trace": f"t{n}"}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                                timestamp=datetime.fromtimestamp(BASE_S + n, timezone.utc))

    for chunk in range(start, start + count, 500):
        await asyncio.gather(*(channel.default_exchange.publish(message(n), routing_key=queue)
                               for n in range(chunk, min(chunk + 500, start + count))))


def pipeline(runner, url: str, queue: str, prefetch: int = 500, limits: dict | None = None) -> None:
    runner.write([{"name": "in", "source": {"rabbitmq": {"url": url, "queue": queue, "prefetch": prefetch}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}], limits=limits)


async def ready_count(channel, queue: str) -> int:
    return (await channel.declare_queue(queue, passive=True)).declaration_result.message_count


async def settled(queue: str) -> bool:
    """No message of `queue` is ready or delivered-and-unacked (AMQP tells only the ready count:
    ask the broker's own CLI)."""
    def counts() -> str:
        return subprocess.run(["rabbitmqctl", "-q", "list_queues", "name", "messages_ready",
                               "messages_unacknowledged"], capture_output=True, text=True, timeout=30).stdout
    rows = [line.split() for line in (await asyncio.to_thread(counts)).splitlines()]
    return any(row[0] == queue and row[1:] == ["0", "0"] for row in rows if len(row) == 3)


async def test_rabbitmq_source_exact_mapping_and_acks_after_store(amqp, rabbitmq_url, runner, nc):
    channel, declare = amqp
    total = 2000
    queue = await declare()
    await publish(channel, queue, 0, total)
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, rabbitmq_url, queue, prefetch=200)
    await runner.start_all()
    await sink.wait_count(total, timeout=60)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert await runner.terminate("in") == 0
    counts = numbers(sink)
    assert set(counts) == set(range(total)) and len(sink.msgs) == total
    assert sorted(sink.ids) == sorted(f"m-{n}" for n in range(total))
    m = next(m for m in sink.msgs if json.loads(m.data)["n"] == 9)
    assert json.loads(m.headers["Nf-Keys"]) == [queue]
    assert m.headers["trace"] == "t9"
    assert int(m.headers["Nf-Event-Time"]) == (BASE_S + 9) * 1000
    # Every delivery was acked: after the source's channel closed nothing went back to the queue.
    assert await ready_count(channel, queue) == 0


async def test_rabbitmq_source_sigkill_restart_loses_and_duplicates_nothing(amqp, rabbitmq_url, runner, nc):
    channel, declare = amqp
    total = 10_000
    queue = await declare()
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, rabbitmq_url, queue)
    await runner.start_all()
    # Odd messages have no message_id: their ids are content digests, just as stable on redelivery.
    await publish(channel, queue, 0, total // 2, with_id=lambda n: n % 2 == 0)
    await sink.wait_count(1000, timeout=60)
    runner.kill("in")
    assert len(sink.msgs) < total // 2, "the kill came too late to test anything"
    await publish(channel, queue, total // 2, total - total // 2, with_id=lambda n: n % 2 == 0)
    runner.start("in")
    await arrives_exactly_once(sink, runner, nc, total)


async def test_rabbitmq_source_connection_cut_mid_stream_reconnects_exactly_once(amqp, rabbitmq_url, runner, nc):
    """The source's connection is cut (a TCP relay in front of RabbitMQ) and restored: unacked
    deliveries go back to the queue, the source reconnects, and each message is stored once."""
    channel, declare = amqp
    total = 10_000
    queue = await declare()
    proxy = await TcpProxy(5672).start()
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, f"amqp://guest:guest@127.0.0.1:{proxy.port}/", queue, prefetch=200)
    await runner.start_all()
    await publish(channel, queue, 0, total)
    await sink.wait_count(1000, timeout=60)
    await proxy.stop()
    assert len(sink.msgs) < total, "the cut came too late to test anything"
    await wait_for(lambda: "Connection" in runner.log("in") or "connection" in runner.log("in"), 30,
                   "the source to notice the cut")
    await proxy.start()
    await arrives_exactly_once(sink, runner, nc, total, timeout=90)
    # The copies redelivered after the cut are deduplicated and acked a little after the last
    # original arrives; stopping before that would hand them back to the queue.
    await wait_for(lambda: settled(queue), 30, "the source to ack every redelivered copy", interval=0.5)
    assert await runner.terminate("in", timeout=15) == 0
    assert await ready_count(channel, queue) == 0
    await proxy.stop()


async def test_rabbitmq_source_stops_promptly_while_rabbitmq_is_unreachable(amqp, rabbitmq_url, runner, nc):
    channel, declare = amqp
    queue = await declare()
    proxy = await TcpProxy(5672).start()
    pipeline(runner, f"amqp://guest:guest@127.0.0.1:{proxy.port}/", queue)
    await runner.start_all()
    await wait_for(lambda: "rabbitmq source in: queue" in runner.log("in"), 30, "the source to consume")
    await proxy.stop()
    await wait_for(lambda: "Reconnecting" in runner.log("in"), 30, "the source to notice the cut")
    assert await runner.terminate("in", timeout=15) == 0


async def test_rabbitmq_source_reports_ready_messages_while_backed_up(amqp, rabbitmq_url, runner, nc):
    channel, declare = amqp
    total = 3000
    queue = await declare()
    await publish(channel, queue, 0, total)
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, rabbitmq_url, queue, prefetch=100, limits={"bufferMaxLength": 400, "bufferUsageLimit": 50})
    await runner.provision()
    port = free_port()
    runner.start("in", NATSFLOW_METRICS_PORT=str(port))  # the sink is not running: its buffer fills

    def ready() -> float | None:
        return scrape_gauge(port, "source_upstream_backlog", state="lag")

    await backlog_while_full(runner, nc, port, total, "ready messages reported")
    runner.start("out")
    await sink.wait_count(total, timeout=60)
    await wait_for(lambda: ready() == 0, 30, "no ready messages once everything is read")
    assert len(sink.msgs) == total


async def test_rabbitmq_missing_queue_is_named(runner, rabbitmq_url):
    pipeline(runner, rabbitmq_url, f"missing-{uuid.uuid4().hex[:6]}")
    await runner.provision()
    proc = runner.start("in")
    await wait_for(lambda: proc.poll() is not None, 30, "the source to exit")
    assert proc.returncode != 0
    assert "source.rabbitmq.queue: queue 'missing-" in runner.log("in")
