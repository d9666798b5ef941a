"""The inter-step buffer against a real JetStream: provisioning, reading, writing, back pressure."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from framework import buffer as b
from framework.spec import OnFull, parse_pipeline


def pipeline(name: str, max_len: int = 1000, usage: int = 80):
    return parse_pipeline({
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"bufferMaxLength": max_len, "bufferUsageLimit": usage, "readBatchSize": 50, "ackWait": "5s"},
            "vertices": [{"name": "in", "source": {"generator": {}}},
                         {"name": "out", "sink": {"blackhole": {}}}],
            "edges": [{"from": "in", "to": "out"}],
        },
    }, check_handlers=False)


def out_msg(p, i: int) -> b.OutMessage:
    return b.OutMessage(b.edge_subject(p.name, "out", "in"), f"m{i}".encode(),
                        b.envelope_headers(f"in:{i}", f"id{i}", 1_700_000_000_000 + i, ["k"]))


@pytest.fixture
def name() -> str:
    return "b" + uuid.uuid4().hex[:8]


async def test_names_are_deterministic_and_documented():
    assert b.stream_name("sentiment", "classify") == "nf_sentiment_classify"
    assert b.consumer_name("sentiment", "classify") == "nf_sentiment_classify"
    assert b.edge_subject("sentiment", "classify", "in") == "nf.sentiment.classify.in"
    assert b.dlq_stream_name("sentiment", "classify") == "nf_sentiment_classify_dlq"


async def test_provision_is_idempotent_and_updates(nc, name):
    js = nc.jetstream()
    p = pipeline(name)
    first = dict(await b.provision(js, p))
    assert set(first.values()) == {"created"}  # streams, consumers and the watermark bucket
    again = dict(await b.provision(js, p))
    assert set(again.values()) == {"unchanged"}
    bigger = dict(await b.provision(js, pipeline(name, max_len=5000)))
    assert bigger[f"stream nf_{name}_out"] == "updated"
    info = await js.stream_info(f"nf_{name}_out")
    assert info.config.max_msgs == 5000 and info.config.retention == "workqueue"
    assert info.config.duplicate_window == b.DUPLICATE_WINDOW_S
    cinfo = await js.consumer_info(f"nf_{name}_out", f"nf_{name}_out")
    assert cinfo.config.ack_policy == "explicit" and cinfo.config.ack_wait == 5


async def test_publisher_deduplicates_by_msg_id_and_reader_batches(nc, name):
    js = nc.jetstream()
    p = pipeline(name)
    await b.provision(js, p)
    pub = b.JetStreamPublisher(nc)
    await pub.start()
    msgs = [out_msg(p, i) for i in range(120)]
    assert await pub.publish(msgs) == [None] * 120
    assert await pub.publish(msgs[:60]) == [None] * 60  # duplicates are not errors
    assert (await js.stream_info(f"nf_{name}_out")).state.messages == 120

    reader = b.BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=50)
    await reader.start()
    got = []
    while len(got) < 120:
        batch = await reader.fetch(2.0)
        assert batch, "reader returned nothing while messages were waiting"
        assert len(batch) <= 50
        got.extend(batch)
    assert [m.data for m in got] == [f"m{i}".encode() for i in range(120)]
    assert [b.stream_sequence(m) for m in got] == list(range(1, 121))
    assert await reader.fetch(0.2) == []
    for m in got:
        await m.ack()
    await reader.close()
    await pub.close()


async def test_publish_to_missing_stream_reports_no_responders(nc):
    pub = b.JetStreamPublisher(nc, ack_timeout=2)
    await pub.start()
    [err] = await pub.publish([b.OutMessage("nowhere." + uuid.uuid4().hex, b"x", {})])
    assert isinstance(err, b.PublishError) and err.code == 503
    await pub.close()


async def test_writer_waits_at_usage_limit_until_reader_drains(nc, name):
    js = nc.jetstream()
    p = pipeline(name, max_len=100, usage=50)
    await b.provision(js, p)
    pub = b.JetStreamPublisher(nc)
    await pub.start()
    writer = b.BufferWriter(js, pub)
    writer.add_target("out", f"nf_{name}_out", 50)
    task = asyncio.create_task(writer.write({"out": (OnFull.retry_until_success, [out_msg(p, i) for i in range(80)])}))
    reader = b.BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=10)
    await reader.start()
    seen: list[int] = []
    while len(seen) < 80:
        stored = (await js.stream_info(f"nf_{name}_out")).state.messages
        assert stored <= 50, f"buffer holds {stored} > usage limit 50"
        batch = await reader.fetch(5.0)
        assert batch, f"stalled after {len(seen)} messages"
        for m in batch:
            seen.append(int(m.data[1:]))
            await m.ack()
    assert await task == {"out": 0}
    assert sorted(seen) == list(range(80))
    await reader.close()
    await pub.close()


async def test_writer_discard_latest_drops_and_counts(nc, name):
    js = nc.jetstream()
    p = pipeline(name, max_len=100, usage=30)
    await b.provision(js, p)
    pub = b.JetStreamPublisher(nc)
    await pub.start()
    writer = b.BufferWriter(js, pub)
    writer.add_target("out", f"nf_{name}_out", 30)
    dropped = await writer.write({"out": (OnFull.discard_latest, [out_msg(p, i) for i in range(50)])})
    assert dropped == {"out": 20}
    assert (await js.stream_info(f"nf_{name}_out")).state.messages == 30
    await pub.close()


async def test_hard_limit_rejects_with_stream_full_code(nc, name):
    """max_msgs with discard=new is the backstop when several writers race past the soft limit."""
    js = nc.jetstream()
    p = pipeline(name, max_len=10)
    await b.provision(js, p)
    pub = b.JetStreamPublisher(nc)
    await pub.start()
    errors = await pub.publish([out_msg(p, i) for i in range(12)])
    assert errors[:10] == [None] * 10
    assert all(isinstance(e, b.PublishError) and e.code == b.ERR_STREAM_FULL for e in errors[10:])
    await pub.close()
