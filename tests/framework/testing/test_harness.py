"""framework.testing.run_pipeline: a pipeline file run in memory, with exact results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from framework import Datum
from framework.testing import (
    DeadLetter,
    HarnessError,
    Watermark,
    arun_pipeline,
    run_pipeline,
)

H = "tests.framework.testing.handlers"
REPO = Path(__file__).resolve().parents[3]
BASE = 1_700_000_000_000  # a multiple of 10 s: windows start on it
SOURCE = {"jetstream": {"stream": "IN"}}
SINK = {"log": {}}


def pipeline(tmp_path: Path, vertices: list[dict], edges: list[dict], **spec) -> Path:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "t"},
           "spec": {**spec, "vertices": vertices, "edges": edges}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def chain(tmp_path: Path, udf: dict, **spec) -> Path:
    """in -> m (udf) -> out"""
    return pipeline(tmp_path, [{"name": "in", "source": SOURCE}, {"name": "m", "udf": udf},
                               {"name": "out", "sink": SINK}],
                    [{"from": "in", "to": "m"}, {"from": "m", "to": "out"}], **spec)


def at(keys: list[str], value: bytes, offset_ms: int) -> Datum:
    return Datum(keys, value, event_time_ms=BASE + offset_ms)


def test_readme_snippet(monkeypatch):
    """The README's "Unit-testing a pipeline" snippet, executed as it is written there."""
    readme = (REPO / "README.md").read_text()
    snippet = readme.split("### Unit-testing a pipeline", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "run_pipeline(\"examples/sentiment/pipeline.yaml\"" in snippet
    monkeypatch.chdir(REPO)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet itself
    assert [json.loads(v)["text"] for v in scope["out"]["rest"]] == ["meh"]


def test_routing_by_tags_with_fan_out_drop_and_filter(tmp_path):
    path = pipeline(
        tmp_path,
        [{"name": "in", "source": SOURCE}, {"name": "tagger", "udf": {"map": {"handler": f"{H}:tag_words"}}},
         {"name": "any-a", "sink": SINK}, {"name": "a-and-b", "sink": SINK}, {"name": "not-a", "sink": SINK},
         {"name": "copy", "sink": SINK}],
        [{"from": "in", "to": "tagger"}, {"from": "in", "to": "copy"},
         {"from": "tagger", "to": "any-a", "conditions": {"tags": {"operator": "or", "values": ["a"]}}},
         {"from": "tagger", "to": "a-and-b", "conditions": {"tags": {"operator": "and", "values": ["a", "b"]}}},
         {"from": "tagger", "to": "not-a", "conditions": {"tags": {"operator": "not", "values": ["a"]}}}])
    out = run_pipeline(path, inputs={"in": [b"a", b"ab", b"b", b"drop", b"none", b"c"]})
    assert dict(out) == {"any-a": [b"a", b"ab"], "a-and-b": [b"ab"], "not-a": [b"b", b"c"],
                         "copy": [b"a", b"ab", b"b", b"drop", b"none", b"c"]}
    assert all(dl == [] for dl in out.dead_letters.values())


def test_flatmap_sets_keys_and_keeps_event_time(tmp_path):
    out = run_pipeline(chain(tmp_path, {"flatmap": {"handler": f"{H}:split"}}),
                       inputs={"in": [at([], b"hello big world", 5)]})
    assert [(d.keys, d.value, d.event_time_ms) for d in out.messages("out")] == [
        (["h"], b"hello", BASE + 5), (["b"], b"big", BASE + 5), (["w"], b"world", BASE + 5)]


def test_batch_map_chunks_by_max_batch_size(tmp_path):
    out = run_pipeline(chain(tmp_path, {"batchMap": {"handler": f"{H}:batch_sizes", "maxBatchSize": 2}}),
                       inputs={"in": [b"x", b"y", b"z", b"u", b"v"]})
    assert out["out"] == [b"x/2", b"y/2", b"z/2", b"u/2", b"v/1"]
    by_id = run_pipeline(chain(tmp_path, {"batchMap": {"handler": f"{H}:batch_by_id"}}),
                         inputs={"in": [Datum([], b"p", id="id-1"), Datum([], b"q", id="id-2")]})
    assert by_id["out"] == [b"P", b"Q"]
    assert [d.id for d in by_id.messages("out")] == ["id-1", "id-2"]  # a map keeps ids end to end


def test_map_stream_yields_in_order_with_headers(tmp_path):
    out = run_pipeline(chain(tmp_path, {"mapStream": {"handler": f"{H}:stream_chars"}}), inputs={"in": [b"ab", b"c"]})
    assert [(d.value, dict(d.headers)) for d in out.messages("out")] == [
        (b"a", {"X-From": "ab"}), (b"b", {"X-From": "ab"}), (b"c", {"X-From": "c"})]


def reduce_chain(tmp_path: Path, window: dict, late_edge: bool = False, **reduce) -> Path:
    vertices = [{"name": "in", "source": SOURCE},
                {"name": "r", "udf": {"reduce": {"handler": f"{H}:total", "window": window, **reduce}}},
                {"name": "out", "sink": SINK}]
    edges = [{"from": "in", "to": "r"}, {"from": "r", "to": "out"}]
    if late_edge:
        vertices.append({"name": "late", "sink": SINK})
        edges.append({"from": "r", "to": "late", "late": True})
    return pipeline(tmp_path, vertices, edges)


def sums(out, sink: str = "out") -> list[tuple]:
    return [(r["key"], r["sum"], r["n"], r["start"] - BASE, r["end"] - BASE) for r in map(json.loads, out[sink])]


def test_reduce_fixed_windows_by_key_close_when_input_ends(tmp_path):
    path = reduce_chain(tmp_path, {"fixed": {"length": "10s"}}, partitions=2)
    out = run_pipeline(path, inputs={"in": [at(["a"], b"1", 1000), at(["b"], b"2", 2000), at(["a"], b"3", 9999),
                                            at(["a"], b"4", 10_000)]})
    assert sorted(sums(out)) == [("a", 4, 1, 10_000, 20_000), ("a", 4, 2, 0, 10_000), ("b", 2, 1, 0, 10_000)]
    assert [d.event_time_ms - BASE for d in out.messages("out")] == sorted(
        d.event_time_ms - BASE for d in out.messages("out"))  # each result at its window's end


def test_reduce_watermark_closes_windows_and_routes_late_data(tmp_path):
    path = reduce_chain(tmp_path, {"fixed": {"length": "10s"}}, late_edge=True)
    out = run_pipeline(path, inputs={"in": [at(["a"], b"1", 1000), at(["a"], b"2", 2000), Watermark(BASE + 10_000),
                                            at(["a"], b"5", 500), at(["a"], b"7", 10_500)]})
    assert sums(out) == [("a", 3, 2, 0, 10_000), ("a", 7, 1, 10_000, 20_000)]
    assert out["late"] == [b"5"]


def test_reduce_allowed_lateness_keeps_a_window_open(tmp_path):
    path = reduce_chain(tmp_path, {"fixed": {"length": "10s"}}, late_edge=True, allowedLateness="2s")
    out = run_pipeline(path, inputs={"in": [at(["a"], b"1", 1000), Watermark(BASE + 11_000), at(["a"], b"5", 500),
                                            Watermark(BASE + 12_000), at(["a"], b"9", 600)]})
    assert sums(out) == [("a", 6, 2, 0, 10_000)]
    assert out["late"] == [b"9"]


def test_reduce_sliding_windows(tmp_path):
    path = reduce_chain(tmp_path, {"sliding": {"length": "10s", "slide": "5s"}})
    out = run_pipeline(path, inputs={"in": [at(["k"], b"1", 1000), at(["k"], b"2", 7000), at(["k"], b"4", 12_000)]})
    assert sums(out) == [("k", 1, 1, -5000, 5000), ("k", 3, 2, 0, 10_000), ("k", 6, 2, 5000, 15_000),
                         ("k", 4, 1, 10_000, 20_000)]


def test_reduce_session_windows_merge_per_key(tmp_path):
    path = reduce_chain(tmp_path, {"session": {"timeout": "5s"}})
    out = run_pipeline(path, inputs={"in": [at(["a"], b"1", 0), at(["b"], b"10", 1000), at(["a"], b"2", 3000),
                                            at(["a"], b"4", 20_000), at(["b"], b"20", 5500)]})
    assert sorted(sums(out)) == [("a", 3, 2, 0, 8000), ("a", 4, 1, 20_000, 25_000), ("b", 30, 2, 1000, 10_500)]


def test_reduce_unkeyed_and_a_failing_window_is_dead_lettered(tmp_path):
    path = pipeline(tmp_path, [
        {"name": "in", "source": SOURCE},
        {"name": "r", "udf": {"reduce": {"handler": f"{H}:reduce_fails", "window": {"fixed": {"length": "10s"}},
                                         "keyed": False}}},
        {"name": "out", "sink": SINK}], [{"from": "in", "to": "r"}, {"from": "r", "to": "out"}])
    out = run_pipeline(path, inputs={"in": [at(["x"], b"1", 0), at(["y"], b"2", 1), at(["x"], b"13", 10_000),
                                            at(["z"], b"1", 10_001)]})
    assert out["out"] == [b"3"]
    assert [(d.value, d.keys, d.error) for d in out.dead_letters["r"]] == [
        (b"13", ["x"], "RuntimeError: unlucky window"), (b"1", ["z"], "RuntimeError: unlucky window")]


def test_side_inputs_from_the_call(tmp_path):
    path = pipeline(tmp_path, [{"name": "in", "source": SOURCE},
                               {"name": "m", "udf": {"map": {"handler": f"{H}:prefix_with_side_input"}},
                                "sideInputs": ["prefix"]},
                               {"name": "out", "sink": SINK}],
                    [{"from": "in", "to": "m"}, {"from": "m", "to": "out"}],
                    sideInputs=[{"name": "prefix", "handler": f"{H}:tag_words", "trigger": {"schedule": "@every 1s"}}])
    assert run_pipeline(path, inputs={"in": [b"x"]}, side_inputs={"prefix": b"p:"})["out"] == [b"p:x"]
    assert run_pipeline(path, inputs={"in": [b"x"]}, side_inputs={"prefix": "q:"})["out"] == [b"q:x"]
    with pytest.raises(HarnessError, match="side input.s. prefix listed by vertices need a value"):
        run_pipeline(path, inputs={"in": [b"x"]})


def test_a_failing_udf_dead_letters_its_input_and_the_rest_continue(tmp_path):
    out = run_pipeline(chain(tmp_path, {"map": {"handler": f"{H}:fail_on_bad"}, "retry": {"attempts": 2,
                                                                                         "interval": "1ms"}}),
                       inputs={"in": [b"ok1", Datum(["k"], b"bad1", headers={"X-Trace": "t1"}), b"ok2"]})
    assert out["out"] == [b"ok1", b"ok2"]
    assert out.dead_letters["m"] == [DeadLetter(b"bad1", "ValueError: cannot take b'bad1'", ["k"], {"X-Trace": "t1"})]


def test_what_the_worker_dead_letters_besides_exceptions(tmp_path):
    out = run_pipeline(chain(tmp_path, {"map": {"handler": f"{H}:not_bytes"}}),
                       inputs={"in": [b"int", b"fine", Datum([], b"hdr", headers={"bad name": "x"})]})
    assert out["out"] == [b"fine"]
    assert [(d.value, d.error) for d in out.dead_letters["m"]] == [
        (b"int", "TypeError: Message.value must be bytes or str, not int")]
    [unstorable] = out.dead_letters["in"]  # a record the buffer cannot take: the source dead-letters it
    assert unstorable.value == b"hdr" and unstorable.error.startswith("UnstorableRecord: record 2: ")


def test_a_retried_call_that_succeeds_is_no_dead_letter(tmp_path):
    out = run_pipeline(chain(tmp_path, {"map": {"handler": f"{H}:flaky"}, "retry": {"interval": "1ms"}}),
                       inputs={"in": [b"r1", b"r2"]})
    assert out["out"] == [b"r1", b"r2"] and out.dead_letters["m"] == []


def cycle(tmp_path: Path, handler: str) -> Path:
    return pipeline(tmp_path, [{"name": "in", "source": SOURCE}, {"name": "c", "udf": {"map": {"handler": handler}}},
                               {"name": "out", "sink": SINK}],
                    [{"from": "in", "to": "c"},
                     {"from": "c", "to": "c", "conditions": {"tags": {"values": ["again"]}}},
                     {"from": "c", "to": "out", "conditions": {"tags": {"values": ["done"]}}}])


def test_a_cycle_runs_until_its_messages_leave(tmp_path):
    out = run_pipeline(cycle(tmp_path, f"{H}:countdown"), inputs={"in": [b"3", b"1"]})
    assert out["out"] == [b"0", b"0"]


def test_a_cycle_that_never_ends_is_stopped_at_the_round_limit(tmp_path):
    with pytest.raises(HarnessError, match=r"still moves after 50 rounds \(buffers with messages: nf_t_c\)"):
        run_pipeline(cycle(tmp_path, f"{H}:forever"), inputs={"in": [b"x"]}, max_rounds=50)


def test_bad_calls_name_what_is_wrong(tmp_path):
    path = chain(tmp_path, {"map": {"handler": f"{H}:fail_on_bad"}})
    with pytest.raises(HarnessError, match="inputs name 'm', which is not a source vertex .sources: in."):
        run_pipeline(path, inputs={"m": [b"x"]})
    with pytest.raises(KeyError, match="'in' is not a sink vertex"):
        run_pipeline(path, inputs={"in": []})["in"]


async def test_inside_an_event_loop():
    sentiment = REPO / "examples" / "sentiment" / "pipeline.yaml"
    with pytest.raises(HarnessError, match="use `await arun_pipeline"):
        run_pipeline(sentiment, inputs={"in": [b"meh"]})
    out = await arun_pipeline(sentiment, inputs={"in": [b"meh"]})
    assert out["positive"] == [] and len(out["rest"]) == 1


def test_a_udsink_is_recorded_not_called_unless_named_in_call_sinks(tmp_path):
    from tests.framework.testing import handlers

    sink = {"udsink": {"handler": f"{H}:sink_collect"}, "fallback": {"udsink": {"handler": f"{H}:sink_fallback"}},
            "retryStrategy": {"backoff": {"steps": 1, "interval": "1ms"}, "onFailure": "fallback"}}
    path = pipeline(tmp_path, [{"name": "in", "source": SOURCE}, {"name": "out", "sink": sink}],
                    [{"from": "in", "to": "out"}], limits={"readBatchSize": 2})
    handlers.written.clear()
    handlers.fallback_got.clear()
    assert run_pipeline(path, inputs={"in": [b"a", b"b", b"bad"]})["out"] == [b"a", b"b", b"bad"]
    assert handlers.written == [] and handlers.fallback_got == []
    out = run_pipeline(path, inputs={"in": [b"a", b"b", b"bad"]}, call_sinks=["out"])
    assert out["out"] == [b"a", b"b"] and handlers.written == [b"a", b"b"]
    assert handlers.fallback_got == [(b"bad", "OSError: the store refuses b'bad'")]
    with pytest.raises(HarnessError, match="call_sinks names in, which is not a sink vertex"):
        run_pipeline(path, inputs={}, call_sinks=["in"])


def test_input_keys_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match=r"input item 0: keys must be a list of str, got \[1\]"):
        run_pipeline(chain(tmp_path, {"map": {"handler": f"{H}:fail_on_bad"}}), inputs={"in": [Datum([1], b"x")]})


def test_ordered_pipeline_runs_in_memory_with_per_key_order(tmp_path):
    """spec.ordered partitions the map's and sink's buffers (3 each); the harness reads them
    partition by partition and every key's messages reach the sink in input order."""
    path = chain(tmp_path, {"map": {"handler": "tests.udfs:identity"}}, ordered=True, ordering={"partitions": 3},
                 limits={"readBatchSize": 7})
    inputs = [at([f"k{i % 5}"], f"{i % 5}:{i // 5}".encode(), i) for i in range(100)]
    out = run_pipeline(path, inputs={"in": inputs})
    got = [d.value.decode().split(":") for d in out.messages("out")]
    assert len(got) == 100
    for key in map(str, range(5)):
        assert [int(n) for k, n in got if k == key] == list(range(20))
