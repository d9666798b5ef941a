"""The inter-step buffer against a real JetStream: provisioning, reading, writing, back pressure."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from framework.isb import envelope, names, provision
from framework.isb.reader import BufferReader
from framework.isb.reconcile import ProvisionError
from framework.isb.writer import ERR_STREAM_FULL, BufferWriter, JetStreamPublisher, OutMessage, PublishError
from framework.spec import OnFull, parse_pipeline
from framework.transport.client import FastClient
from tests.conftest import wait_for


def pipeline(name: str, max_len: int = 1000, usage: int = 80, buffers: dict | None = None,
             out_buffers: dict | None = None, ack_wait: str = "5s"):
    out = {"name": "out", "sink": {"blackhole": {}}, **({"buffers": out_buffers} if out_buffers else {})}
    return parse_pipeline({
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"bufferMaxLength": max_len, "bufferUsageLimit": usage, "readBatchSize": 50, "ackWait": ack_wait},
            "buffers": buffers or {},
            "vertices": [{"name": "in", "source": {"generator": {}}}, out],
            "edges": [{"from": "in", "to": "out"}],
        },
    }, check_handlers=False)


def out_msg(p, i: int) -> OutMessage:
    return OutMessage(names.edge_subject(p.name, "out", "in"), f"m{i}".encode(),
                        envelope.envelope_headers(f"in:{i}", f"id{i}", 1_700_000_000_000 + i, ["k"]))


@pytest.fixture
def name() -> str:
    return "b" + uuid.uuid4().hex[:8]


async def test_names_are_deterministic_and_documented():
    assert names.stream_name("sentiment", "classify") == "nf_sentiment_classify"
    assert names.consumer_name("sentiment", "classify") == "nf_sentiment_classify"
    assert names.edge_subject("sentiment", "classify", "in") == "nf.sentiment.classify.in"
    assert names.dlq_stream_name("sentiment", "classify") == "nf_sentiment_classify_dlq"


async def test_provision_is_idempotent_and_updates(nc, name):
    js = nc.jetstream()
    p = pipeline(name)
    first = dict(await provision.provision(js, p))
    assert set(first.values()) == {"created"}  # streams, consumers and the watermark bucket
    again = dict(await provision.provision(js, p))
    assert set(again.values()) == {"unchanged"}
    bigger = dict(await provision.provision(js, pipeline(name, max_len=5000)))
    assert bigger[f"stream nf_{name}_out"] == "updated (max_msgs 1000 -> 5000)"  # what changed, never silently
    info = await js.stream_info(f"nf_{name}_out")
    assert info.config.max_msgs == 5000 and info.config.retention == "workqueue"
    assert info.config.duplicate_window == provision.DUPLICATE_WINDOW_S
    cinfo = await js.consumer_info(f"nf_{name}_out", f"nf_{name}_out")
    assert cinfo.config.ack_policy == "explicit" and cinfo.config.ack_wait == 5


async def test_publisher_deduplicates_by_msg_id_and_reader_batches(nc, name):
    js = nc.jetstream()
    p = pipeline(name)
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    msgs = [out_msg(p, i) for i in range(120)]
    assert await pub.publish(msgs) == [None] * 120
    assert await pub.publish(msgs[:60]) == [None] * 60  # duplicates are not errors
    assert (await js.stream_info(f"nf_{name}_out")).state.messages == 120

    reader = BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=50)
    await reader.start()
    got = []
    while len(got) < 120:
        batch = await reader.fetch(2.0)
        assert batch, "reader returned nothing while messages were waiting"
        assert len(batch) <= 50
        got.extend(batch)
    assert [m.data for m in got] == [f"m{i}".encode() for i in range(120)]
    assert [envelope.stream_sequence(m) for m in got] == list(range(1, 121))
    assert await reader.fetch(0.2) == []
    for m in got:
        await m.ack()
    await reader.close()
    await pub.close()


async def test_a_stopping_reader_hands_back_nothing_into_its_own_open_pull_requests(nc, nats_url, name):
    """A reader that naks what it holds while it stops (a worker's SIGTERM) still has pull requests
    open: a redelivery into one of them after it stopped listening was lost to the closed inbox
    until the ack wait ended (3 of 4 tries lost some of 1000). Every one must reach the
    next reader long before the 60 s ack wait."""
    js = nc.jetstream()
    p = pipeline(name, max_len=5000, ack_wait="60s")
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    n = 1000  # the consumer's max_ack_pending
    assert await pub.publish([out_msg(p, i) for i in range(n)]) == [None] * n
    await pub.close()
    stopping = FastClient()
    await stopping.connect(nats_url)
    try:
        reader = BufferReader(stopping, f"nf_{name}_out", f"nf_{name}_out", batch_size=n)
        await reader.start()
        held: list = []
        await wait_for(lambda: _fetch_into(reader, held, n), 20, f"the first reader to hold all {n}")
        reader.interrupt()
        await reader.nak(held)
        await reader.close()
    finally:
        await stopping.close()
    nxt = BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=500)
    await nxt.start()
    got: list = []
    await wait_for(lambda: _fetch_into(nxt, got, n), 20, f"all {n} redelivered to the next reader")
    assert sorted(envelope.stream_sequence(m) for m in got) == list(range(1, n + 1))
    await nxt.ack(got)
    await nxt.close()


async def _fetch_into(reader: BufferReader, into: list, n: int) -> bool:
    into.extend(await reader.fetch(0.2))
    return len(into) >= n


async def test_publish_to_missing_stream_reports_no_responders(nc):
    pub = JetStreamPublisher(nc, ack_timeout=2)
    await pub.start()
    [err] = await pub.publish([OutMessage("nowhere." + uuid.uuid4().hex, b"x", {})])
    assert isinstance(err, PublishError) and err.code == 503
    await pub.close()


async def test_writer_waits_at_usage_limit_until_reader_drains(nc, name):
    js = nc.jetstream()
    p = pipeline(name, max_len=100, usage=50)
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    writer = BufferWriter(js, pub)
    writer.add_target("out", f"nf_{name}_out", 50)
    task = asyncio.create_task(writer.write({"out": (OnFull.retry_until_success, [out_msg(p, i) for i in range(80)])}))
    reader = BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=10)
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
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    writer = BufferWriter(js, pub)
    writer.add_target("out", f"nf_{name}_out", 30)
    dropped = await writer.write({"out": (OnFull.discard_latest, [out_msg(p, i) for i in range(50)])})
    assert dropped == {"out": 20}
    assert (await js.stream_info(f"nf_{name}_out")).state.messages == 30
    await pub.close()


async def test_hard_limit_rejects_with_stream_full_code(nc, name):
    """max_msgs with discard=new is the backstop when several writers race past the soft limit."""
    js = nc.jetstream()
    p = pipeline(name, max_len=10)
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    errors = await pub.publish([out_msg(p, i) for i in range(12)])
    assert errors[:10] == [None] * 10
    assert all(isinstance(e, PublishError) and e.code == ERR_STREAM_FULL for e in errors[10:])
    await pub.close()


# ---- spec.buffers on one server (the cluster tests are in test_replication.py) ---------------


async def test_buffers_settings_reach_every_stream_and_bucket(nc, name):
    """maxAge/maxBytes/storage go to the buffer and the dead-letter stream (the vertex's override
    over the pipeline's); the KV bucket gets the pipeline-wide storage and never an age limit."""
    js = nc.jetstream()
    p = pipeline(name, buffers={"storage": "memory", "maxAge": "1h"}, out_buffers={"maxBytes": "2MiB"})
    await provision.provision(js, p)
    for stream in (f"nf_{name}_out", f"nf_{name}_out_dlq"):
        cfg = (await js.stream_info(stream)).config
        assert (cfg.storage, cfg.max_age, cfg.max_bytes, cfg.num_replicas) == ("memory", 3600.0, 2 << 20, 1), stream
    kv = (await js.stream_info(f"KV_nf_{name}_wm")).config
    assert (kv.storage, kv.max_age, kv.max_bytes) == ("memory", 0.0, -1)


async def test_limits_change_is_printed_and_storage_change_is_refused(nc, name):
    js = nc.jetstream()
    await provision.provision(js, pipeline(name))
    changed = dict(await provision.provision(js, pipeline(name, out_buffers={"maxAge": "10m", "maxBytes": "1MiB"})))
    assert changed[f"stream nf_{name}_out"] == "updated (max_bytes unlimited -> 1048576, max_age unlimited -> 600s)"
    assert (await js.stream_info(f"nf_{name}_out")).config.max_age == 600.0
    with pytest.raises(ProvisionError) as refused:
        await provision.provision(js, pipeline(name, out_buffers={"storage": "memory"}))
    assert str(refused.value).startswith(
        f"spec.vertices[1].buffers.storage: stream nf_{name}_out is stored in file on the server and JetStream "
        "cannot change a stream's storage in place; to move it to memory, drain the pipeline")
    assert f"`nats stream rm nf_{name}_out`" in str(refused.value)
    assert (await js.stream_info(f"nf_{name}_out")).config.storage == "file"  # untouched


async def test_max_bytes_full_is_back_pressure(nc, name):
    """nats-server 2.15 refuses a publish into a discard-new stream at max_bytes with err_code
    10077 "maximum bytes exceeded" (the code of "maximum messages exceeded"): the writer waits
    for the reader as at any full buffer, and nothing is lost or dropped."""
    js = nc.jetstream()
    p = pipeline(name, max_len=10_000, buffers={"maxBytes": "1MiB"})
    await provision.provision(js, p)
    pub = JetStreamPublisher(nc)
    await pub.start()
    big = [OutMessage(m.subject, bytes(100_000), m.headers) for m in (out_msg(p, i) for i in range(30))]
    errors = await pub.publish(big[:12])
    refused = [e for e in errors if e is not None]
    assert refused and all(isinstance(e, PublishError) and e.code == ERR_STREAM_FULL
                           and "maximum bytes exceeded" in str(e) for e in refused), errors
    stored = (await js.stream_info(f"nf_{name}_out")).state.messages
    assert stored == 12 - len(refused) and stored <= 10

    writer = BufferWriter(js, pub)
    writer.add_target("out", f"nf_{name}_out", p.limits_for("out").buffer_soft_limit)
    task = asyncio.create_task(writer.write({"out": (OnFull.retry_until_success, big)}))
    reader = BufferReader(nc, f"nf_{name}_out", f"nf_{name}_out", batch_size=5)
    await reader.start()
    seen: set[str] = set()
    while len(seen) < 30:
        info = await js.stream_info(f"nf_{name}_out")
        assert info.state.bytes <= 1 << 20
        batch = await reader.fetch(5.0)
        assert batch, f"stalled after {len(seen)} messages"
        for m in batch:
            seen.add(m.headers[envelope.HDR_ID])
            await m.ack()
    assert await task == {"out": 0}
    assert seen == {f"id{i}" for i in range(30)}
    await reader.close()
    await pub.close()
