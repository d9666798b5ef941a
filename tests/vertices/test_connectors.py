"""NATS and JetStream sources and sinks, and the log sink, each in a real vertex process."""

from __future__ import annotations

import json

from tests.conftest import Collector, wait_for


async def test_nats_source_to_jetstream_sink_creates_stream(runner, nc):
    subj, out_stream = f"{runner.name}.in", f"OUT_{runner.name}"
    runner.write(
        [{"name": "in", "source": {"nats": {"subject": subj, "queue": "q"}}},
         {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.stored"}}}],
        [{"from": "in", "to": "out"}])
    await runner.start_all()

    async def subscribed() -> bool:  # a probe made it through (its fixed msg id dedups repeats)
        await nc.publish(subj, b"probe", headers={"Nats-Msg-Id": "probe"})
        try:
            return (await nc.jetstream().stream_info(out_stream)).state.messages >= 1
        except Exception:
            return False

    await wait_for(subscribed, 30, "the nats source to subscribe")
    for i in range(500):
        await nc.publish(subj, f"n{i}".encode(), headers={"Nf-Keys": json.dumps([f"k{i % 2}"]), "trace": "t"})
    await nc.flush()
    js = nc.jetstream()

    async def stored() -> int:
        return (await js.stream_info(out_stream)).state.messages >= 501

    await wait_for(stored, 30, "500 messages and the probe in the sink's stream")
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert (await js.stream_info(out_stream)).state.messages == 501
    psub = await js.pull_subscribe(f"{runner.name}.stored", durable=None, stream=out_stream)
    msgs = await psub.fetch(501, timeout=5)
    got = {m.data for m in msgs} - {b"probe"}
    assert got == {f"n{i}".encode() for i in range(500)}
    sample = next(m for m in msgs if m.data == b"n3")
    assert json.loads(sample.headers["Nf-Keys"]) == ["k1"] and sample.headers["trace"] == "t"


async def test_jetstream_source_acks_after_store_and_log_sink_prints(runner, nc):
    js = nc.jetstream()
    src = f"SRC_{runner.name}"
    await js.add_stream(name=src, subjects=[f"{runner.name}.src"])
    for i in range(200):
        await js.publish(f"{runner.name}.src", f"line {i}".encode())
    runner.write([{"name": "in", "source": {"jetstream": {"stream": src}}}, {"name": "show", "sink": {"log": {}}}],
                 [{"from": "in", "to": "show"}])
    await runner.start_all()
    await wait_for(lambda: runner.log("show").count(" line ") >= 200, 30, "200 log lines")
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    lines = [ln for ln in runner.log("show").splitlines() if ln.startswith("show id=")]
    assert sorted(lines) == sorted(f"show id={src}:{i + 1} keys=[] line {i}" for i in range(200))
    await wait_for(lambda: runner.source_consumed(nc, src), 10, "every upstream message acked")


async def test_jetstream_source_stores_messages_with_malformed_envelope_headers(runner, nc):
    """A bad `Nf-Keys`/`Nf-Event-Time` from an outside publisher is ignored, not a crashed source."""
    js = nc.jetstream()
    src = f"SRC_{runner.name}"
    await js.add_stream(name=src, subjects=[f"{runner.name}.src"])
    bad = {3: {"Nf-Keys": "not json"}, 5: {"Nf-Keys": '[1, 2]'}, 7: {"Nf-Event-Time": "soon", "Nf-Keys": '["k"]'}}
    for i in range(10):
        await js.publish(f"{runner.name}.src", f"m{i}".encode(), headers=bad.get(i))
    out = await Collector().start(nc, f"{runner.name}.out")
    runner.write([{"name": "in", "source": {"jetstream": {"stream": src}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "out"}])
    await runner.start_all()
    await out.wait_count(10, timeout=30)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(m.data for m in out.msgs) == sorted(f"m{i}".encode() for i in range(10))
    m7 = next(m for m in out.msgs if m.data == b"m7")
    assert json.loads(m7.headers["Nf-Keys"]) == ["k"] and int(m7.headers["Nf-Event-Time"]) > 1_600_000_000_000
    assert "ignored a bad Nf-Event-Time header 'soon'" in runner.log("in")


def test_upstream_headers_are_made_safe_for_nats():
    from vertices.shared.text import safe_id, upstream_headers  # noqa: PLC0415

    got = upstream_headers([("trace id", b"a\r\nb"), ("null", None), ("Nf-Keys", b"x"), ("n", 5)])
    assert got == {"trace_id": "a\\r\\nb", "null": "", "n": "5"}  # a null value (Kafka, AMQP) is empty
    assert upstream_headers([("Nats-Msg-Id", "x")]) is None
    assert upstream_headers([("nats-msg-id", "x"), ("NF-KEYS", "y")]) is None  # any case
    assert safe_id("t:0:1") == "t:0:1" and safe_id("x" * 201) == safe_id("x" * 201) != "x" * 201
