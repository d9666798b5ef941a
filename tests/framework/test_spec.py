"""Spec validation: every rule names the file, the field path and the reason."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framework.spec import SpecError, load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "apiVersion": "natsflow.io/v1",
    "kind": "Pipeline",
    "metadata": {"name": "demo"},
    "spec": {
        "limits": {"readBatchSize": 100, "bufferMaxLength": 1000, "bufferUsageLimit": 80},
        "vertices": [
            {"name": "in", "source": {"http": {"port": 8080}}},
            {"name": "classify", "udf": {"map": {"handler": "tests.udfs:identity"}}},
            {"name": "positive", "sink": {"log": {}}},
            {"name": "rest", "sink": {"blackhole": {}}},
        ],
        "edges": [
            {"from": "in", "to": "classify"},
            {"from": "classify", "to": "positive", "conditions": {"tags": {"operator": "or", "values": ["p"]}}},
            {"from": "classify", "to": "rest", "conditions": {"tags": {"operator": "not", "values": ["p"]}}},
        ],
    },
}


def problems(mutate) -> list[tuple[str, str]]:
    raw = copy.deepcopy(BASE)
    mutate(raw)
    with pytest.raises(SpecError) as err:
        parse_pipeline(raw, file="p.yaml")
    assert str(err.value).startswith("p.yaml: ")
    return err.value.problems


def test_valid_pipeline_resolves_limits():
    p = parse_pipeline(copy.deepcopy(BASE), file="p.yaml")
    assert p.name == "demo"
    limits = p.limits_for("classify")
    assert (limits.read_batch_size, limits.buffer_max_length, limits.buffer_soft_limit) == (100, 1000, 800)
    assert [e.to for e in p.out_edges("classify")] == ["positive", "rest"]


def test_issue_example_file_validates():
    p = load_pipeline(REPO / "examples" / "sentiment" / "pipeline.yaml")
    assert [v.kind for v in p.spec.vertices] == ["source", "udf", "sink", "sink"]


def test_vertex_limits_override_pipeline_limits():
    def m(raw):
        raw["spec"]["vertices"][1]["limits"] = {"readBatchSize": 7, "readTimeout": "250ms", "ackWait": "1m"}
    raw = copy.deepcopy(BASE)
    m(raw)
    limits = parse_pipeline(raw).limits_for("classify")
    assert (limits.read_batch_size, limits.read_timeout, limits.ack_wait, limits.buffer_max_length) == (7, 0.25, 60, 1000)


def test_vertex_buffers_override_the_pipelines_field_by_field():
    raw = copy.deepcopy(BASE)
    raw["spec"]["buffers"] = {"replicas": 3, "maxAge": "24h", "maxBytes": "1GiB"}
    raw["spec"]["vertices"][1]["buffers"] = {"maxAge": "1h", "storage": "memory"}
    p = parse_pipeline(raw)
    classify, positive, shared = p.buffers_for("classify"), p.buffers_for("positive"), p.buffers_for(None)
    assert (classify.replicas, classify.storage.value, classify.max_age, classify.max_bytes) == (3, "memory", 3600, 1 << 30)
    assert (positive.replicas, positive.storage.value, positive.max_age) == (3, "file", 86400)
    assert (shared.replicas, shared.storage.value) == (3, "file")
    # errors name the layer that set a value: the vertex's override, else the pipeline's
    assert (p.buffers_field("classify", "storage"), p.buffers_field("classify", "replicas"),
            p.buffers_field(None, "replicas")) == ("spec.vertices[1].buffers.storage", "spec.buffers.replicas",
                                                   "spec.buffers.replicas")
    defaults = parse_pipeline(copy.deepcopy(BASE)).buffers_for("classify")
    assert (defaults.replicas, defaults.storage.value, defaults.max_age, defaults.max_bytes) == (1, "file", None, None)


@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        (lambda r: r["spec"].update({"buffers": {"replicas": 2}}), "spec.buffers.replicas", "Input should be 1, 3 or 5"),
        (lambda r: r["spec"].update({"buffers": {"replicas": True}}), "spec.buffers.replicas", "1, 3 or 5"),
        (lambda r: r["spec"].update({"buffers": {"storage": "disk"}}), "spec.buffers.storage", "'file' or 'memory'"),
        (lambda r: r["spec"].update({"buffers": {"maxBytes": "64KiB"}}), "spec.buffers.maxBytes",
         "must be at least 1MiB (1048576 bytes), so that a buffer can hold one message"),
        (lambda r: r["spec"].update({"buffers": {"maxAge": "0s"}}), "spec.buffers.maxAge", "greater than 0"),
        (lambda r: r["spec"]["vertices"][2].update({"buffers": {"replicas": 4}}),
         "spec.vertices[2].buffers.replicas", "1, 3 or 5"),
        (lambda r: r["spec"]["vertices"][1]["udf"].update({"flatmap": {"handler": "a:b"}}),
         "spec.vertices[1].udf", "a udf must set exactly one of: map, flatmap, batchMap, mapStream, reduce, numaflow, command (found 2)"),
        (lambda r: r["spec"]["vertices"][2].update({"udf": {"map": {"handler": "a:b"}}}),
         "spec.vertices[2]", "a vertex is exactly one of source, udf or sink (found: udf, sink)"),
        (lambda r: r["spec"]["vertices"][0].update({"name": "In_1"}),
         "spec.vertices[0].name", "'In_1' is not a valid name"),
        (lambda r: r["spec"]["vertices"][1]["udf"]["map"].update({"handler": "nocolon"}),
         "spec.vertices[1].udf.map", "handler 'nocolon' must look like 'package.module:function'"),
        (lambda r: r["spec"]["limits"].update({"bufferUsageLimit": 120}),
         "spec.limits.bufferUsageLimit", "must be at most 100 (a percentage)"),
        (lambda r: r["spec"]["limits"].update({"readTimeout": "soon"}),
         "spec.limits.readTimeout", "'soon' is not a duration"),
        (lambda r: r["spec"]["limits"].update({"readBatchSise": 5}),
         "spec.limits.readBatchSise", "unknown field"),
        (lambda r: r["spec"]["edges"][1]["conditions"]["tags"].update({"operator": "xor"}),
         "spec.edges[1].conditions.tags.operator", "'or', 'and' or 'not'"),
        (lambda r: r["spec"]["vertices"][1].update({"scale": {"min": 3, "max": 2}}),
         "spec.vertices[1].scale", "min (3) must not exceed max (2)"),
        (lambda r: r["spec"]["vertices"][1].update({"udf": {"numaflow": {"env": {"A": "b"}}}}),
         "spec.vertices[1].udf.numaflow", "a numaflow program needs a command (local runs), a container"),
        (lambda r: r["spec"]["vertices"][1].update({"udf": {"numaflow": {
            "command": ["python", "r.py"], "reduce": {"window": {"fixed": {"length": "0s"}}}}}}),
         "spec.vertices[1].udf.numaflow.reduce.window.fixed.length", "must be"),
        (lambda r: r.update({"apiVersion": "numaflow.numaproj.io/v1alpha1"}),
         "apiVersion", "natsflow.io/v1"),
    ],
)
def test_field_errors_name_the_path(mutate, path, reason):
    found = problems(mutate)
    assert any(p == path and reason in r for p, r in found), found


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda r: r["spec"]["edges"].append({"from": "positive", "to": "rest"}),
         ("spec.edges[3].from", "'positive' is a sink; sinks have no out-edges")),
        (lambda r: r["spec"]["edges"].append({"from": "classify", "to": "in"}),
         ("spec.edges[3].to", "'in' is a source; sources have no in-edges")),
        (lambda r: r["spec"]["edges"].append({"from": "in", "to": "classify"}),
         ("spec.edges[3]", "duplicate edge from 'in' to 'classify'")),
        (lambda r: r["spec"]["edges"][0].update({"conditions": {"tags": {"values": ["x"]}}}),
         ("spec.edges[0].conditions", "sources set no tags, so conditions on an edge from a source would "
          "never route by them; remove them")),
        (lambda r: r["spec"]["edges"].append({"from": "in", "to": "nowhere"}),
         ("spec.edges[3].to", "no vertex named 'nowhere'")),
        (lambda r: r["spec"]["vertices"].append({"name": "lonely", "sink": {"log": {}}}),
         ("spec.vertices[4]", "sink 'lonely' has no in-edge (orphan vertex)")),
        (lambda r: r["spec"]["vertices"].append({"name": "classify", "sink": {"log": {}}}),
         ("spec.vertices[4].name", "duplicate vertex name 'classify'")),
        (lambda r: r["spec"]["vertices"][1]["udf"]["map"].update({"handler": "tests.udfs:nope"}),
         ("spec.vertices[1].udf.map.handler", "module 'tests.udfs' has no attribute 'nope'")),
        (lambda r: r["spec"]["vertices"][1]["udf"]["map"].update({"handler": "no_such_pkg.mod:f"}),
         ("spec.vertices[1].udf.map.handler", "cannot import module 'no_such_pkg.mod' (No module named 'no_such_pkg')")),
    ],
)
def test_graph_and_handler_errors(mutate, expected):
    assert expected in problems(mutate)


def test_a_numaflow_reducer_is_partitioned_like_a_python_reduce():
    raw = copy.deepcopy(BASE)
    raw["spec"]["vertices"][1]["udf"] = {"numaflow": {"command": ["python", "reduce.py"], "reduce": {
        "window": {"fixed": {"length": "10s"}}, "partitions": 3}}}
    p = parse_pipeline(raw, file="p.yaml")
    assert p.vertex("classify").udf.kind == "numaflow"
    assert p.partitions("classify") == [0, 1, 2]


def test_cycles_are_allowed():
    raw = copy.deepcopy(BASE)
    raw["spec"]["edges"].append(
        {"from": "classify", "to": "classify", "conditions": {"tags": {"values": ["again"]}}})
    assert len(parse_pipeline(raw).in_edges("classify")) == 2


def test_cli_validate_reports_file_path_and_exit_code(tmp_path):
    raw = copy.deepcopy(BASE)
    raw["spec"]["vertices"][2]["udf"] = {"map": {"handler": "tests.udfs:missing"}}
    raw["spec"]["vertices"][1]["udf"]["map"]["handler"] = "tests.udfs:missing"
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(f)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert f"{f}: spec.vertices[2]: a vertex is exactly one of source, udf or sink (found: udf, sink)" in res.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    res = subprocess.run([sys.executable, "-m", "framework.cli", "validate", str(good)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "is valid" in res.stdout


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpecError, match="cannot read file"):
        load_pipeline(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed")
    with pytest.raises(SpecError, match=r"bad.yaml: line 1: not valid YAML: "):
        load_pipeline(bad)


# ---- bounds: the largest value passes, one more is refused with the limit in the message ------


def vertex_as(i: int, kind: str, body: dict, **extra):
    """Mutation turning vertex i into `kind: body` (plus vertex-level fields)."""
    def put(raw):
        raw["spec"]["vertices"][i] = {"name": raw["spec"]["vertices"][i]["name"], kind: body, **extra}
    return put


def gen(**fields):
    return vertex_as(0, "source", {"generator": fields})


def udf(**fields):
    return vertex_as(1, "udf", fields)


def sink(**fields):
    return vertex_as(2, "sink", fields)


def reduce_with(**fields):
    return udf(reduce={"handler": "tests.udfs:identity", "window": {"fixed": {"length": "1s"}}, **fields})


X = object()  # where the value under test goes


def fill(template, value):
    if template is X:
        return value
    if isinstance(template, dict):
        return {k: fill(v, value) for k, v in template.items()}
    return template


INT64_MAX = 2**63 - 1
# (field path in the error, mutation with X for the value, largest accepted, how the limit is shown)
BOUNDS = [
    ("spec.limits.readBatchSize", lambda x: lambda r: r["spec"]["limits"].update(readBatchSize=x), 10_000, "10000"),
    ("spec.limits.bufferMaxLength", lambda x: lambda r: r["spec"]["limits"].update(bufferMaxLength=x),
     100_000_000, "100000000"),
    ("spec.limits.readTimeout", lambda x: lambda r: r["spec"]["limits"].update(readTimeout=x), 3600, "1h"),
    ("spec.limits.ackWait", lambda x: lambda r: r["spec"]["limits"].update(ackWait=x), 86400, "24h"),
    ("spec.vertices[0].source.generator.rpu", lambda x: gen(rpu=x), 100_000_000, "100000000"),
    ("spec.vertices[0].source.generator.duration", lambda x: gen(duration=x), 3600, "1h"),
    ("spec.vertices[0].source.generator.msgSize", lambda x: gen(msgSize=x), 1 << 20, "1048576"),
    ("spec.vertices[0].source.generator.keyCount", lambda x: gen(keyCount=x), 1_000_000, "1000000"),
    ("spec.vertices[0].source.generator.total", lambda x: gen(total=x), INT64_MAX, str(INT64_MAX)),
    ("spec.vertices[0].source.http.port", lambda x: vertex_as(0, "source", {"http": {"port": x}}), 65535, "65535"),
    ("spec.vertices[0].source.http.maxBodySize", lambda x: vertex_as(0, "source", {"http": {"maxBodySize": x}}),
     64 << 20, str(64 << 20)),
    ("spec.vertices[0].source.rabbitmq.prefetch",
     lambda x: vertex_as(0, "source", {"rabbitmq": {"queue": "q", "prefetch": x}}), 65535, "65535"),
    ("spec.vertices[0].source.redisStreams.claimIdle",
     lambda x: vertex_as(0, "source", {"redisStreams": {"stream": "s", "group": "g", "claimIdle": x}}), 86400, "24h"),
    ("spec.vertices[1].udf.retry.attempts",
     lambda x: udf(map={"handler": "tests.udfs:identity"}, retry={"attempts": x}), 100, "100"),
    ("spec.vertices[1].udf.retry.cap", lambda x: udf(map={"handler": "tests.udfs:identity"}, retry={"cap": x}),
     3600, "1h"),
    ("spec.vertices[1].udf.retry.factor", lambda x: udf(map={"handler": "tests.udfs:identity"}, retry={"factor": x}),
     10, "10.0"),
    ("spec.vertices[1].udf.batchMap.maxBatchSize",
     lambda x: udf(batchMap={"handler": "tests.udfs:identity", "maxBatchSize": x}), 10_000, "10000"),
    ("spec.vertices[1].udf.batchMap.maxWait",
     lambda x: udf(batchMap={"handler": "tests.udfs:identity", "maxWait": x}), 60, "1m"),
    ("spec.vertices[1].udf.reduce.partitions", lambda x: reduce_with(partitions=x), 256, "256"),
    ("spec.vertices[1].udf.reduce.allowedLateness", lambda x: reduce_with(allowedLateness=x), 7 * 86400, "168h"),
    ("spec.vertices[1].udf.reduce.window.session.timeout",
     lambda x: udf(reduce={"handler": "tests.udfs:identity", "window": {"session": {"timeout": x}}}),
     7 * 86400, "168h"),
    ("spec.vertices[2].sink.redis.maxLen", lambda x: sink(redis={"stream": "s", "maxLen": x}), INT64_MAX,
     str(INT64_MAX)),
    ("spec.vertices[2].sink.http.concurrency", lambda x: sink(http={"url": "http://h", "concurrency": x}),
     1000, "1000"),
    ("spec.vertices[2].sink.http.timeout", lambda x: sink(http={"url": "http://h", "timeout": x}), 3600, "1h"),
    ("spec.vertices[1].udf.timeout", lambda x: udf(map={"handler": "tests.udfs:identity"}, timeout=x), 86400, "24h"),
    ("spec.vertices[2].sink.timeout", lambda x: sink(log={}, timeout=x), 86400, "24h"),
    ("spec.vertices[2].sink.retryStrategy.backoff.steps",
     lambda x: sink(log={}, retryStrategy={"backoff": {"steps": x}}), 1_000_000, "1000000"),
    ("spec.vertices[2].sink.retryStrategy.backoff.jitter",
     lambda x: sink(log={}, retryStrategy={"backoff": {"jitter": x}}), 1, "1.0"),
    ("spec.vertices[2].scale.max", lambda x: lambda r: r["spec"]["vertices"][2].update(scale={"max": x}), 128, "128"),
    ("spec.vertices[2].scale.lagThreshold",
     lambda x: lambda r: r["spec"]["vertices"][2].update(scale={"lagThreshold": x}), 100_000_000, "100000000"),
    ("spec.vertices[2].scale.scaleDownStabilization",
     lambda x: lambda r: r["spec"]["vertices"][2].update(scale={"scaleDownStabilization": x}), 3600, "1h"),
    ("spec.watermark.maxDelay", lambda x: lambda r: r["spec"].update(watermark={"maxDelay": x}), 7 * 86400, "168h"),
    ("spec.watermark.idleSource.threshold",
     lambda x: lambda r: r["spec"].update(watermark={"idleSource": {"threshold": x, "incrementBy": 1}}),
     86400, "24h"),
]


@pytest.mark.parametrize("path, mutation, largest, shown", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_largest_value_passes_and_the_next_is_refused_with_the_limit(path, mutation, largest, shown):
    raw = copy.deepcopy(BASE)
    mutation(largest)(raw)
    parse_pipeline(raw, check_handlers=False)
    over = largest + (0.5 if isinstance(largest, float) or shown.endswith(".0") else 1)
    found = problems(mutation(over))
    assert any(p == path and r.startswith(f"must be at most {shown}") for p, r in found), found


@pytest.mark.parametrize("mutation, path, reason", [
    (lambda r: r["spec"]["limits"].update(readBatchSize=True), "spec.limits.readBatchSize",
     "expected a whole number, got true"),
    (lambda r: r["spec"]["limits"].update(readBatchSize=2.5), "spec.limits.readBatchSize",
     "expected a whole number, got 2.5"),
    (lambda r: r["spec"]["limits"].update(readBatchSize="5.0"), "spec.limits.readBatchSize",
     "expected a whole number, got the text '5.0'"),
    (lambda r: r["spec"]["limits"].update(readBatchSize="1e3"), "spec.limits.readBatchSize",
     "expected a whole number, got the text '1e3' (YAML reads a number like 1e9 as text"),
    (lambda r: r["spec"]["limits"].update(ackWait=float("nan")), "spec.limits.ackWait", "is not a finite duration"),
    (lambda r: r["spec"]["limits"].update(ackWait="500ms"), "spec.limits.ackWait",
     "must be at least 1s (JetStream would redeliver messages still being processed)"),
    (lambda r: r["spec"]["limits"].update(readTimeout=0), "spec.limits.readTimeout", "must be at least 10ms"),
    (gen(duration=float("inf")), "spec.vertices[0].source.generator.duration", "is not a finite duration"),
    (lambda r: r["spec"]["vertices"][2].update(scale={"max": 0}), "spec.vertices[2].scale.max", "must be at least 1"),
    (udf(map={"handler": "tests.udfs:identity"}, retry={"factor": float("nan")}), "spec.vertices[1].udf.retry.factor",
     "expected a finite number, got nan"),
    (udf(map={"handler": "tests.udfs:identity"}, retry={"factor": False}), "spec.vertices[1].udf.retry.factor",
     "expected a number, got false"),
    (reduce_with(keyed="yes"), "spec.vertices[1].udf.reduce.keyed", "expected true or false, got the text 'yes'"),
    (vertex_as(0, "source", {"mqtt": {"topic": "t", "qos": True}}), "spec.vertices[0].source.mqtt.qos",
     "expected a whole number, got true"),
    (udf(reduce={"handler": "tests.udfs:identity", "window": {"sliding": {"length": "10s", "slide": "1ms"}}}),
     "spec.vertices[1].udf.reduce.window.sliding", "length / slide must be at most 1000 (every message belongs to "
     "that many windows at once; here 10000)"),
    (lambda r: r["spec"].update(sideInputs=[{"name": "s", "handler": "tests.udfs:identity",
                                              "trigger": {"schedule": "@every 9999h"}}]),
     "spec.sideInputs[0].trigger.schedule", "@every must be from 100ms to 168h"),
])
def test_numbers_are_strict_and_finite(mutation, path, reason):
    found = problems(mutation)
    assert any(p == path and reason in r for p, r in found), found


def test_whole_floats_and_numbers_as_text_are_numbers():
    """`1.0e+4` is a whole number; digits as text are what a `${VAR}` in a numeric field becomes."""
    raw = copy.deepcopy(BASE)
    raw["spec"]["limits"].update(bufferMaxLength=1.0e+4, readBatchSize=" 20 ")
    reduce_with(keyed="false")(raw)
    raw["spec"]["vertices"][1]["udf"]["retry"] = {"factor": "2.5"}
    p = parse_pipeline(raw)
    limits = p.limits_for("classify")
    assert (limits.buffer_max_length, limits.read_batch_size) == (10_000, 20)
    assert (p.vertex("classify").udf.reduce.keyed, p.vertex("classify").udf.retry.factor) == (False, 2.5)


async def test_largest_accepted_values_provision_on_a_real_server(nats_url):
    """The bounds are values JetStream takes: provision a pipeline with numbers at their limits."""
    import nats

    from framework.isb.provision import provision

    name = "p" * 44  # the longest pipeline name
    raw = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": {
        "limits": {"readBatchSize": 10_000, "bufferMaxLength": 100_000_000, "ackWait": "24h", "readTimeout": "1h"},
        "vertices": [
            {"name": "in", "source": {"generator": {"rpu": 1_000_000}}},
            {"name": "r" * (63 - 45), "udf": {"reduce": {"handler": "tests.udfs:identity", "partitions": 4,
                                                        "window": {"fixed": {"length": "168h"}}}}},
            {"name": "out", "sink": {"log": {}}, "scale": {"min": 128, "max": 128}},
        ],
        "edges": [{"from": "in", "to": "r" * 18}, {"from": "r" * 18, "to": "out"}]}}
    p = parse_pipeline(raw)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    done: list[tuple[str, str]] = []
    try:
        done = await provision(js, p)
        assert {r for _, r in done} == {"created"}
        assert sum(what.startswith("consumer ") for what, _ in done) == 4 + 1  # 4 partitions, the sink
        info = await js.consumer_info(f"nf_{name}_out", f"nf_{name}_out")
        assert (info.config.max_ack_pending, info.config.ack_wait) == (4 * 10_000 * 128, 86400)
        assert (await js.stream_info(f"nf_{name}_{'r' * 18}_p3")).config.max_msgs == 100_000_000
    finally:
        for what, _ in done:
            kind, _, obj = what.partition(" ")
            if kind == "stream":
                await js.delete_stream(obj)
            elif kind == "kv":
                await js.delete_key_value(obj)
        await nc.close()


# ---- graph: cycles must reach a sink ---------------------------------------------------------


def with_vertices_and_edges(extra_vertices, extra_edges):
    def m(raw):
        raw["spec"]["vertices"] += [{"name": n, "udf": {"map": {"handler": "tests.udfs:identity"}}}
                                    for n in extra_vertices]
        raw["spec"]["edges"] += [{"from": a, "to": b} for a, b in extra_edges]
    return m


@pytest.mark.parametrize("vertices, edges", [
    (["a", "b"], [("in", "a"), ("a", "b"), ("b", "a"), ("b", "rest")]),  # a 2-cycle with an exit
    (["a"], [("in", "a"), ("a", "a"), ("a", "positive")]),  # a self-loop with an exit
    (["a", "b", "c"], [("in", "a"), ("a", "b"), ("a", "c"), ("b", "c"), ("c", "a"), ("c", "rest")]),  # join + cycle
])
def test_cycles_and_joins_that_reach_a_sink_are_valid(vertices, edges):
    raw = copy.deepcopy(BASE)
    with_vertices_and_edges(vertices, edges)(raw)
    p = parse_pipeline(raw)
    assert {e.to for e in p.out_edges("in")} == {"classify", vertices[0]}


@pytest.mark.parametrize("vertices, edges, reasons", [
    (["a"], [("in", "a"), ("a", "a")], ["'a' feeds only itself with no path to a sink"]),
    (["a", "b"], [("in", "a"), ("a", "b"), ("b", "a")], ["'a', 'b' form a cycle with no path to a sink"]),
    # a vertex leading only into a closed cycle is named by the cycle it feeds
    (["x", "a", "b"], [("in", "x"), ("x", "a"), ("a", "b"), ("b", "a")], ["'a', 'b' form a cycle"]),
    # two closed cycles, each reported; a cycle downstream of an exit does not count as one
    (["a", "b", "c"], [("classify", "a"), ("a", "a"), ("in", "b"), ("b", "c"), ("c", "b")],
     ["'a' feeds only itself", "'b', 'c' form a cycle"]),
])
def test_cycles_without_a_path_to_a_sink_are_named(vertices, edges, reasons):
    found = problems(with_vertices_and_edges(vertices, edges))
    assert [p for p, _ in found] == ["spec.edges"] * len(reasons), found
    assert all(reason in r for reason, (_, r) in zip(reasons, found)), found


# ---- names: what NATS accepts, what natsflow keeps, what Kubernetes allows -------------------


@pytest.mark.parametrize("subject, wildcards, problem", [
    ("orders.eu", False, None), ("orders.*", True, None), ("orders.>", True, None), ("*.x.>", True, None),
    ("", True, "cannot be empty"), ("a b", True, "whitespace"), ("a\tb", True, "whitespace"),
    ("a..b", True, "empty token"), (".a", True, "empty token"), ("a.", True, "empty token"),
    ("a.>.b", True, "'>' can only be the last token"), ("a.b*", True, "must be whole tokens"),
    ("orders.*", False, "has a wildcard, but a sink publishes to one subject"),
])
def test_subject_rules(subject, wildcards, problem):
    from framework.spec.names import subject_problem

    found = subject_problem(subject, wildcards=wildcards)
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize("a, b, expected", [
    ("nf.x", "nf.>", True), ("nf", "nf.>", False), (">", "nf.>", True), ("*", "nf.>", False),
    ("*.demo.v", "nf.>", True), ("nfx.a", "nf.>", False), ("a.*", "a.b", True), ("a.*", "a.b.c", False),
    ("a.>", "a.b.c", True), ("a.b", "a.c", False),
])
def test_subject_overlap(a, b, expected):
    from framework.spec.names import overlaps

    assert overlaps(a, b) is expected and overlaps(b, a) is expected


def scaled_kafka_source(pipeline: str, vertex: str):
    """A kafka source with scale.max > 1 renders `<pipeline>-<vertex>-scaler` for KEDA's credentials."""
    def m(raw):
        raw["metadata"]["name"] = pipeline
        raw["spec"]["vertices"][0] = {"name": vertex, "scale": {"max": 2}, "source": {
            "kafka": {"brokers": ["b:9092"], "topic": "t", "consumerGroup": "g"}}}
        raw["spec"]["edges"][0]["from"] = vertex
    return m


@pytest.mark.parametrize("mutation, path, reason", [
    (sink(nats={"subject": "nfdlq.demo.classify"}), "spec.vertices[2].sink.nats.subject",
     "overlaps nfdlq.>, which natsflow keeps for its buffers, dead letters and archives"),
    (sink(log={}, fallback={"nats": {"subject": "nf.x.y"}}), "spec.vertices[2].sink.fallback.nats.subject",
     "overlaps nf.>"),
    (vertex_as(0, "source", {"nats": {"subject": "*.demo.classify.in"}}), "spec.vertices[0].source.nats.subject",
     "overlaps nf.>"),
    (vertex_as(0, "source", {"nats": {"subject": "in", "queue": "q 1"}}), "spec.vertices[0].source.nats.queue",
     "queue group name cannot contain whitespace"),
    (vertex_as(0, "source", {"jetstream": {"stream": "a/b"}}), "spec.vertices[0].source.jetstream.stream",
     "found '/'"),
    (vertex_as(0, "source", {"jetstream": {"stream": "s", "consumer": "c.1"}}),
     "spec.vertices[0].source.jetstream.consumer", "a JetStream consumer name cannot contain"),
    (vertex_as(0, "source", {"jetstream": {"stream": "x" * 256}}), "spec.vertices[0].source.jetstream.stream",
     "at most 255 characters (JetStream's limit)"),
    (vertex_as(0, "source", {"jetstream": {"stream": "nf_demo_classify_dlq"}}),
     "spec.vertices[0].source.jetstream.stream", "is one of this pipeline's own buffers or dead-letter streams"),
    (vertex_as(0, "source", {"jetstream": {"stream": "nf_other_classify"}}),
     "spec.vertices[0].source.jetstream.stream", "a work queue that its vertex consumes alone"),
    (sink(jetstream={"stream": "out", "subject": "out.>"}), "spec.vertices[2].sink.jetstream.subject",
     "has a wildcard"),
    (lambda r: r["metadata"].update(name="n" * 45), "metadata.name",
     "must be at most 44 characters (this one has 45), so that '<name>-sideinputs-manager'"),
    (lambda r: r["spec"]["vertices"][1].update(name="c" * 59) or r["spec"]["edges"][0].update(to="c" * 59) or
     [e.update({"from": "c" * 59}) for e in r["spec"]["edges"][1:]], "spec.vertices[1].name",
     f"the Kubernetes object name 'demo-{'c' * 59}' would have 64 characters; Kubernetes allows 63"),
    (scaled_kafka_source(pipeline="k" * 40, vertex="i" * 16),
     "spec.vertices[0].name", f"'{'k' * 40}-{'i' * 16}-scaler' would have 64 characters"),
])
def test_names_nats_and_kubernetes_accept(mutation, path, reason):
    found = problems(mutation)
    assert any(p == path and reason in r for p, r in found), found


def test_another_pipelines_dead_letters_can_be_read():
    raw = copy.deepcopy(BASE)
    vertex_as(0, "source", {"jetstream": {"stream": "nf_other_classify_dlq"}})(raw)
    assert parse_pipeline(raw).vertex("in").source.jetstream.stream == "nf_other_classify_dlq"


def test_longest_names_fit_kubernetes_and_jetstream():
    from framework.isb import names
    from framework.k8s.render import object_name

    raw = copy.deepcopy(BASE)
    raw["metadata"]["name"] = "p" * 44
    raw["spec"]["vertices"][1]["name"] = "c" * 18
    raw["spec"]["edges"][0]["to"] = "c" * 18
    for e in raw["spec"]["edges"][1:]:
        e["from"] = "c" * 18
    p = parse_pipeline(raw)
    assert len(object_name(p, "c" * 18)) == 63 and len(object_name(p, "sideinputs-manager")) == 63
    # the longest vertex name any valid pipeline can have is 63 - 2; its partitioned dead letters still fit
    assert len(names.dlq_stream_name("p", "v" * 61) + "_p255") < 255


# ---- YAML: duplicate keys, merge keys, dates -------------------------------------------------


def test_duplicate_keys_are_refused_at_any_depth_with_line_and_path(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(BASE, sort_keys=False).replace(
        "  - name: positive\n", "  - name: positive\n    outputSchema: {properties: {a: {type: int, type: str}}}\n"))
    with pytest.raises(SpecError) as err:
        load_pipeline(f)
    assert err.value.problems == [("line 20", "duplicate key 'type' in spec.vertices[2].outputSchema.properties.a "
                                               "(first at line 20; YAML allows a key once per mapping)")]


def test_merge_keys_may_be_overridden_and_dates_stay_text(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("""\
apiVersion: natsflow.io/v1
kind: Pipeline
metadata: {name: demo, labels: {released: 2024-02-30}}
spec:
  limits: {<<: {readBatchSize: 10, ackWait: 5s}, readBatchSize: 20}
  vertices:
    - {name: in, source: {http: {}}}
    - {name: out, sink: {log: {}}}
  edges: [{from: in, to: out}]
""")
    p = load_pipeline(f)
    assert (p.limits_for("out").read_batch_size, p.limits_for("out").ack_wait) == (20, 5)
    assert p.metadata.labels == {"released": "2024-02-30"}


def test_many_problems_are_capped_in_the_message():
    raw = copy.deepcopy(BASE)
    raw["spec"]["edges"] += [{"from": "in", "to": f"v{i}"} for i in range(300)]
    with pytest.raises(SpecError) as err:
        parse_pipeline(raw, file="p.yaml")
    lines = str(err.value).splitlines()
    assert len(err.value.problems) == 300 and len(lines) == 101
    assert lines[-1] == "p.yaml: ... and 200 more problems"
