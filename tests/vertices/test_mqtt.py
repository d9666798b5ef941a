"""The MQTT source as a real vertex process against the machine's Mosquitto (127.0.0.1:1883).

Mosquitto holds at most `max_queued_messages` (1000 by default) QoS 1 messages per client beyond
the 20 in flight and drops the rest, so the tests keep the backlog below that."""

from __future__ import annotations

import asyncio
import json
import uuid

import aiomqtt
import pytest_asyncio

from tests.conftest import Collector, wait_for
from tests.vertices.conftest import TcpProxy, arrives_exactly_once, numbers


@pytest_asyncio.fixture
async def mqtt_session():
    """A unique client id for the source; its persistent session is removed at the end."""
    client_id = f"nf-test-{uuid.uuid4().hex[:10]}"
    yield client_id
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=client_id, clean_session=True):
        pass  # connecting with a clean session discards the stored one


async def publish(topic: str, start: int, count: int, qos: int = 1, pace: float = 0.0) -> None:
    """Publish `count` numbered messages; `pace` seconds apart when set (traffic shaping, so that a
    fault lands while messages are still flowing, however loaded the machine is)."""
    async with aiomqtt.Client("127.0.0.1", 1883) as client:
        for n in range(start, start + count):
            await client.publish(topic, json.dumps({"n": n}).encode(), qos=qos)
            if pace:
                await asyncio.sleep(pace)


def pipeline(runner, url: str, topic: str, client_id: str, qos: int = 1) -> None:
    runner.write([{"name": "in", "source": {"mqtt": {"url": url, "topic": topic, "qos": qos, "clientId": client_id}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}])


async def subscribed(runner) -> None:
    await wait_for(lambda: "subscribed to" in runner.log("in"), 30, "the mqtt source to subscribe")


async def test_mqtt_source_exact_with_topic_keys(mqtt_session, mqtt_url, runner, nc):
    base = f"nf/{uuid.uuid4().hex[:8]}"
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, mqtt_url, f"{base}/#", mqtt_session)
    await runner.start_all()
    await subscribed(runner)
    await publish(f"{base}/a", 0, 400)
    await publish(f"{base}/b", 400, 400)
    await sink.wait_count(800, timeout=60)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    counts = numbers(sink)
    assert set(counts) == set(range(800)) and len(sink.msgs) == 800
    assert len(set(sink.ids)) == 800
    for m in sink.msgs:
        want = f"{base}/a" if json.loads(m.data)["n"] < 400 else f"{base}/b"
        assert json.loads(m.headers["Nf-Keys"]) == [want]


async def test_mqtt_source_sigkill_restart_loses_and_duplicates_nothing(mqtt_session, mqtt_url, runner, nc):
    topic = f"nf/{uuid.uuid4().hex[:8]}"
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, mqtt_url, topic, mqtt_session)
    await runner.start_all()
    await subscribed(runner)
    sent = 0
    for _ in range(2):  # paced so the broker's queue for us stays far below its limit
        await publish(topic, sent, 200)
        sent += 200
        await sink.wait_count(sent - 100, timeout=30)
    # Kill while the third chunk is still being published, paced over ~2 s: 50 of it through, the
    # rest not yet sent, so the kill lands mid-stream however fast or loaded the machine is (unpaced,
    # a loaded machine once had all of it through before the kill).
    publishing = asyncio.create_task(publish(topic, sent, 400, pace=0.005))
    await sink.wait_count(sent + 50, timeout=30)
    runner.kill("in")
    sent += 400
    await publishing
    assert len(sink.msgs) < sent, "the kill came too late to test anything"
    await publish(topic, sent, 500)  # kept by the broker for the session while the source is down
    sent += 500
    runner.start("in")
    await arrives_exactly_once(sink, runner, nc, sent, timeout=60)


async def test_mqtt_source_connection_cut_mid_stream_reconnects_exactly_once(mqtt_session, mqtt_url, runner, nc):
    """The source's connection is cut (a TCP relay in front of Mosquitto) and restored: the
    session resends what was not acknowledged, with the same ids, and keeps what came meanwhile."""
    topic = f"nf/{uuid.uuid4().hex[:8]}"
    proxy = await TcpProxy(1883).start()
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, f"mqtt://127.0.0.1:{proxy.port}", topic, mqtt_session)
    await runner.start_all()
    await subscribed(runner)
    await publish(topic, 0, 300)
    await sink.wait_count(200, timeout=30)
    await proxy.stop()
    await wait_for(lambda: "reconnecting" in runner.log("in"), 30, "the source to notice the cut")
    await publish(topic, 300, 400)  # the broker keeps these for the session
    await proxy.start()
    await arrives_exactly_once(sink, runner, nc, 700, timeout=60)
    assert await runner.terminate("in", timeout=15) == 0
    await proxy.stop()


async def test_mqtt_qos0_while_connected_arrives_exactly(mqtt_session, mqtt_url, runner, nc):
    topic = f"nf/{uuid.uuid4().hex[:8]}"
    sink = await Collector().start(nc, f"{runner.name}.out")
    pipeline(runner, mqtt_url, topic, mqtt_session, qos=0)
    await runner.start_all()
    await subscribed(runner)
    await publish(topic, 0, 500, qos=0)
    await sink.wait_count(500, timeout=30)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert set(numbers(sink)) == set(range(500)) and len(sink.msgs) == 500
    assert len(set(sink.ids)) == 500  # random ids: qos 0 is never resent


async def test_mqtt_bad_url_is_named(runner):
    pipeline(runner, "http://127.0.0.1:1883", "x", "nf-bad")
    await runner.provision()
    proc = runner.start("in")
    await wait_for(lambda: proc.poll() is not None, 30, "the source to exit")
    assert proc.returncode != 0
    assert "source.mqtt.url: scheme must be mqtt:// or mqtts://" in runner.log("in")


def test_mqtt_spec_errors_name_the_field():
    from framework.spec import SpecError, parse_pipeline  # noqa: PLC0415

    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "m"},
           "spec": {"vertices": [{"name": "in", "source": {"mqtt": {"topic": "a/#", "qos": 3}}},
                                 {"name": "out", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    try:
        parse_pipeline(doc)
    except SpecError as exc:
        assert "spec.vertices[0].source.mqtt.qos: Input should be 0, 1 or 2" in str(exc)
    else:
        raise AssertionError("qos 3 was accepted")
    doc["spec"]["vertices"][0] = {"name": "in", "source": {"mqtt": {"topic": "a/#"}}, "scale": {"min": 2, "max": 2}}
    try:
        parse_pipeline(doc)
    except SpecError as exc:
        assert "spec.vertices[0].scale.min: an mqtt source runs as one replica" in str(exc)
    else:
        raise AssertionError("two mqtt replicas were accepted")
