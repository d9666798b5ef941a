"""batchMap, mapStream and the eventTime extractor, in real vertex processes."""

from __future__ import annotations

import json
from collections import defaultdict

from tests.conftest import Collector, wait_for
from tests.framework.test_worker import gen, out, seqs


def batch(name: str, handler: str, **opts) -> dict:
    return {"name": name, "udf": {"batchMap": {"handler": f"tests.udfs:{handler}", **opts}, "retry": {"attempts": 1}}}


async def test_batch_map_in_order_and_by_id(runner, nc):
    a = await Collector().start(nc, f"{runner.name}.a")
    b = await Collector().start(nc, f"{runner.name}.b")
    runner.write([gen("in", 1000), batch("bm", "batch_double", maxBatchSize=64, maxWait="20ms"),
                  batch("bid", "batch_by_id", maxBatchSize=10), out("a", f"{runner.name}.a"),
                  out("b", f"{runner.name}.b")],
                 [{"from": "in", "to": "bm"}, {"from": "in", "to": "bid"},
                  {"from": "bm", "to": "a"}, {"from": "bid", "to": "b"}])
    await runner.start_all()
    await a.wait_count(1000)
    await b.wait_count(1000)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(a)) == list(range(1000)) and sorted(seqs(b)) == list(range(1000))
    sizes = [int(m.headers["batch-size"]) for m in a.msgs]
    assert max(sizes) == 64  # a fast generator fills model batches up to maxBatchSize, never more
    # each output keeps its own input's id, whatever order the handler built its dict in
    assert all(json.loads(m.data)["id"] == m.headers["Nf-Id"] for m in b.msgs)


async def test_batch_map_contract_violation_dead_letters_the_batch(runner, nc):
    runner.write([gen("in", 50), batch("bm", "batch_short", maxBatchSize=10), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "bm"}, {"from": "bm", "to": "o"}])
    await runner.start_all()
    dlq = f"nf_{runner.name}_bm_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 20, "dead letters")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert await runner.stream_messages(nc, dlq) == 50
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.bm")
    assert msg.headers["Nf-Error"].startswith("HandlerResultError: batch handler returned ")
    assert msg.headers["Nf-Error"].endswith(" inputs") and "results for" in msg.headers["Nf-Error"]


async def test_map_stream_keeps_order_per_input(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    runner.write([gen("in", 400), {"name": "ms", "udf": {"mapStream": {"handler": "tests.udfs:stream_three"}}},
                  out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "ms"}, {"from": "ms", "to": "o"}],
                 limits={"readBatchSize": 50})
    await runner.start_all()
    await sink.wait_count(1200)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    per_input = defaultdict(list)
    for m in sink.msgs:
        n, part = m.data.decode().split(":")
        per_input[int(n)].append(int(part))
    assert sorted(per_input) == list(range(400))
    assert all(parts == [0, 1, 2] for parts in per_input.values())
    assert len(sink.msgs) == 1200


async def test_event_time_extractor_sets_event_time(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    src = gen("in", 20)
    src["source"]["eventTime"] = {"handler": "tests.udfs:event_time_from_seq"}
    runner.write([src, {"name": "id", "udf": {"map": {"handler": "tests.udfs:identity"}}}, out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "id"}, {"from": "id", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(20)
    got = {json.loads(m.data)["seq"]: int(m.headers["Nf-Event-Time"]) for m in sink.msgs}
    assert got == {n: 1_704_067_200_000 + n * 1000 for n in range(20)}
