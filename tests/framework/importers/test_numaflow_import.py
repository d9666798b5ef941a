"""`natsflow import numaflow`: Numaflow example pipelines (written from Numaflow's documentation)
converted to exact natsflow specs and checked with natsflow's loader; the report of what does not
convert, with field paths and exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from framework.cli import main
from framework.importers.numaflow import convert
from framework.importers.numaflow.comments import file_comments
from framework.importers.numaflow.values import go_duration
from framework.spec import load_pipeline
from framework.spec.load import parse_pipeline
from framework.spec.model import PipelineSpec, Source
from framework.spec.registry import sinks, sources
from framework.spec.udf import COMMAND_PLACEHOLDER
from framework.spec.yaml_file import read_yaml_file

PIPELINES = Path(__file__).parent / "numaflow_pipelines"
TODO = [COMMAND_PLACEHOLDER]


def program(image: str, **extra: Any) -> dict[str, Any]:
    return {"command": TODO, "container": {"image": image, **extra.pop("container", {})}, **extra}


def pipeline(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": spec}


EXPECTED = {
    "simple": pipeline(
        "simple-pipeline",
        vertices=[
            {"name": "in", "source": {"generator": {"rpu": 5, "duration": "1s"}}},
            {"name": "cat", "udf": {"numaflow": program("quay.io/numaio/numaflow-go/map-cat:stable")},
             "scale": {"min": 1, "max": 1}},
            {"name": "out", "sink": {"log": {}}, "scale": {"min": 1, "max": 1}},
        ],
        edges=[{"from": "in", "to": "cat"}, {"from": "cat", "to": "out"}]),
    "even_odd": pipeline(
        "even-odd",
        vertices=[
            {"name": "in", "source": {"http": {}}},
            {"name": "even-or-odd", "udf": {"numaflow": program("quay.io/numaio/numaflow-python/even-odd:stable",
                                                                 env={"PYTHONUNBUFFERED": "1"})}},
            {"name": "even-sink", "sink": {"log": {}}},
            {"name": "odd-sink", "sink": {"log": {}}},
            {"name": "number-sink", "sink": {"log": {}}},
        ],
        edges=[
            {"from": "in", "to": "even-or-odd"},
            {"from": "even-or-odd", "to": "even-sink", "conditions": {"tags": {"operator": "or",
                                                                               "values": ["even-tag"]}}},
            {"from": "even-or-odd", "to": "odd-sink", "conditions": {"tags": {"operator": "or",
                                                                              "values": ["odd-tag"]}}},
            {"from": "even-or-odd", "to": "number-sink", "conditions": {"tags": {"operator": "not",
                                                                                 "values": ["unknown"]}}},
        ]),
    "reduce_fixed": pipeline(
        "even-odd-sum",
        limits={"readBatchSize": 100, "bufferMaxLength": 10000, "bufferUsageLimit": 70},
        watermark={"maxDelay": "5s"},
        vertices=[
            {"name": "in", "source": {"http": {}}},
            {"name": "atoi", "udf": {"numaflow": program("quay.io/numaio/numaflow-go/map-even-odd:stable")},
             "scale": {"min": 2, "max": 2}},
            {"name": "compute-sum", "udf": {"numaflow": program(
                "quay.io/numaio/numaflow-go/reduce-sum:stable",
                reduce={"window": {"fixed": {"length": "1m"}}, "keyed": True, "allowedLateness": "90s",
                        "partitions": 2})}},
            {"name": "sink", "sink": {"log": {}}, "scale": {"min": 1, "max": 3}},
        ],
        edges=[{"from": "in", "to": "atoi"}, {"from": "atoi", "to": "compute-sum"},
               {"from": "compute-sum", "to": "sink"}]),
    "side_inputs": pipeline(
        "side-input-pipeline",
        sideInputs=[{"name": "threshold", "trigger": {"schedule": "*/15 * * * *"},
                     "numaflow": program("quay.io/numaio/numaflow-go/sideinput-example:stable")}],
        vertices=[
            {"name": "in", "source": {"generator": {"rpu": 10, "duration": "1s", "msgSize": 32, "keyCount": 3}}},
            {"name": "filter", "sideInputs": ["threshold"], "udf": {"numaflow": program(
                "quay.io/numaio/numaflow-go/map-sideinput:stable", container={"args": ["--verbose"]})}},
            {"name": "out", "sink": {"blackhole": {}}},
        ],
        edges=[{"from": "in", "to": "filter"}, {"from": "filter", "to": "out"}]),
    "user_defined": pipeline(
        "ud-pipeline",
        vertices=[
            {"name": "in", "source": {
                "numaflow": program("quay.io/numaio/numaflow-python/simple-source:stable"),
                "transformer": {"numaflow": program("quay.io/numaio/numaflow-python/event-time-filter:stable")}}},
            {"name": "out", "sink": {
                "numaflow": program("quay.io/numaio/numaflow-python/sink-log:stable",
                                    env={"API_TOKEN": {"secretRef": {"name": "sink-creds", "key": "token"}}},
                                    onSuccess={"blackhole": {}}),
                "retryStrategy": {"backoff": {"interval": "500ms", "steps": 5}, "onFailure": "fallback"},
                "fallback": {"log": {}}}},
        ],
        edges=[{"from": "in", "to": "out"}]),
    "connectors": {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline",
        "metadata": {"name": "connectors", "namespace": "streaming", "labels": {"team": "data"}},
        "spec": {
            "vertices": [
                {"name": "orders", "source": {"kafka": {
                    "brokers": ["broker-0:9092", "broker-1:9092"], "topic": "orders", "consumerGroup": "order-readers",
                    "tls": {"insecureSkipVerify": True},
                    "sasl": {"mechanism": "scram-sha-512",
                             "username": {"secretRef": {"name": "kafka-creds", "key": "user"}},
                             "password": {"secretRef": {"name": "kafka-creds", "key": "password"}}}}}},
                {"name": "clicks", "source": {"nats": {"url": "nats://nats:4222", "subject": "clicks.>",
                                                       "queue": "click-readers"}}},
                {"name": "replay", "source": {"jetstream": {"url": "nats://nats:4222", "stream": "archive",
                                                            "consumer": "replayer", "deliverPolicy": "new"}}},
                {"name": "sessions", "scale": {"min": 2, "max": 2}, "udf": {
                    "numaflow": program("registry.example.com/sessionize:1.4",
                                        container={"command": ["/bin/sessionize"]},
                                        reduce={"window": {"session": {"timeout": "5m"}}, "keyed": True}),
                    "retry": {"attempts": 5, "interval": "100ms", "factor": 2, "cap": "3s"}}},
                {"name": "trends", "udf": {"numaflow": program(
                    "registry.example.com/trends:1.4",
                    reduce={"window": {"sliding": {"length": "10m", "slide": "1m"}}, "keyed": False})}},
                {"name": "out", "sink": {"kafka": {"brokers": ["broker-0:9092"], "topic": "summaries",
                                                   "setKey": True}}},
            ],
            "edges": [{"from": "orders", "to": "sessions"}, {"from": "clicks", "to": "sessions"},
                      {"from": "replay", "to": "trends"}, {"from": "sessions", "to": "out"},
                      {"from": "trends", "to": "out"}]}},
}

# The natsflow shapes other parts of issue 14 add: a spec using one validates once they are there.
SHAPES = {
    "side_inputs": lambda: "numaflow" in get_args(PipelineSpec.model_fields["side_inputs"].annotation)[0].model_fields,
    "user_defined": lambda: ("numaflow" in sources() and "numaflow" in sinks()
                             and "transformer" in Source.model_fields),
}


def converted(name: str):
    return convert(read_yaml_file(PIPELINES / f"{name}.yaml"))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_documented_examples_convert_to_exact_specs(name: str) -> None:
    result = converted(name)
    assert result.report.errors == []
    assert result.report.dropped == []
    assert result.pipeline == EXPECTED[name]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_converted_examples_validate(name: str) -> None:
    if not SHAPES.get(name, lambda: True)():
        pytest.skip("needs the numaflow source/sink/transformer/side-input shapes (branches h/nf-udf, h/nf-more)")
    pipeline = parse_pipeline(converted(name).pipeline, check_handlers=False)
    assert len(pipeline.spec.vertices) == len(EXPECTED[name]["spec"]["vertices"])


def test_notes_name_what_natsflow_covers_differently() -> None:
    notes = [(f.path, f.why) for f in converted("reduce_fixed").report.notes]
    assert notes == [
        ("spec.vertices[1].scale.max", "not set: Numaflow's default is 50 replicas; 2 is written"),
        ("spec.vertices[2].udf.groupBy.storage", "natsflow keeps an open window's inputs unacknowledged in its "
                                                 "JetStream buffer: no PBQ volume"),
    ]


def test_what_does_not_convert_is_listed_with_its_field_path() -> None:
    result = converted("partial")
    assert result.report.errors == []
    assert [f.path for f in result.report.dropped] == [
        "spec.limits.concurrency",
        "spec.watermark.idleSource.stepInterval",
        "spec.vertices[0].source.pulsar",
        "spec.vertices[1].udf.container.resources",
        "spec.vertices[1].scale.lookbackSeconds",
        "spec.vertices[2].sink.kafka.config",
    ]
    assert result.report.dropped[2].why == ("natsflow has no pulsar source; the vertex reads NATS subject partial.in "
                                            "instead: publish there or replace the source")
    assert [f.path for f in result.report.notes] == ["spec.interStepBufferServiceName", "spec.watermark.disabled"]
    spec = result.pipeline["spec"]
    assert spec["lifecycle"] == {"desiredPhase": "Paused", "pauseGracePeriod": "1m"}
    assert spec["limits"] == {"readTimeout": "2s"}
    assert spec["watermark"] == {"idleSource": {"threshold": "10s", "incrementBy": "5s"}}
    assert spec["vertices"][0]["source"] == {"nats": {"subject": "partial.in"}}
    assert spec["vertices"][1]["scale"] == {"min": 1, "max": 4, "scaleDownStabilization": "2m"}
    assert spec["vertices"][1]["resources"] == {"limits": {"memory": "256Mi"}}
    assert spec["vertices"][2]["sink"] == {"kafka": {"brokers": ["kafka:9092"], "topic": "out", "setKey": True}}
    assert spec["edges"][0] == {"from": "in", "to": "cat", "onFull": "discardLatest"}
    parse_pipeline(result.pipeline, check_handlers=False)


def test_invalid_numaflow_input_is_an_error_at_its_field_path() -> None:
    doc = read_yaml_file(PIPELINES / "simple.yaml")
    vertices = doc["spec"]["vertices"]
    vertices[1]["udf"]["container"].pop("image")
    vertices[2]["source"] = {"http": {}}
    vertices[0]["sclae"] = {"min": 1}
    doc["spec"]["edges"][0]["conditions"] = {"tags": {"operator": "xor", "values": ["a"]}}
    result = convert(doc)
    assert [(f.path, f.why) for f in result.report.errors] == [
        ("spec.vertices[1].udf.container.image", "a user-defined container needs an image"),
        ("spec.vertices[2]", "a vertex is exactly one of source, udf or sink (found 2)"),
        ("spec.edges[0].conditions.tags.operator", "'xor' is not or, and or not"),
    ]
    assert [(f.path, f.why) for f in result.report.dropped] == [
        ("spec.vertices[0].sclae", "natsflow has no equivalent of this field (or it is no Numaflow field: check the "
                                   "spelling)")]


def test_cli_writes_a_readable_file_that_run_refuses_until_the_command_is_filled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipeline.yaml"
    assert main(["import", "numaflow", str(PIPELINES / "simple.yaml"), "-o", str(out)]) == 0
    assert f"wrote {out}: pipeline 'simple-pipeline', 3 vertices" in capsys.readouterr().err
    text = out.read_text()
    assert text.startswith("# Numaflow's \"simple pipeline\" (quick start): generated data, a cat UDF, a log sink.\n"
                           "#\n# Converted by `natsflow import numaflow` from simple.yaml")
    assert ("\n\n  # passes each message on unchanged\n  # the Go SDK's example\n  - name: cat\n") in text
    assert ("        # TODO: how this program starts locally, e.g. [python, udf.py] (render uses the container)\n"
            f"        command: [{COMMAND_PLACEHOLDER}]\n") in text
    assert read_yaml_file(out) == EXPECTED["simple"]

    assert main(["validate", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"{out}: spec.vertices[1].udf.numaflow.command: still {COMMAND_PLACEHOLDER}, as `natsflow import numaflow` "
        "wrote it: replace it with the command that starts this program locally (e.g. [python, udf.py]); "
        "`natsflow render` runs the container instead\n")
    out.write_text(text.replace(COMMAND_PLACEHOLDER, "python"))
    load_pipeline(out)  # filled in: it loads as `natsflow run` loads it

    assert main(["import", "numaflow", str(PIPELINES / "simple.yaml")]) == 0  # no -o: the file on stdout
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("name", ["reduce_fixed", "user_defined"])
def test_imported_pipelines_render_with_their_containers_as_sidecars(name: str, tmp_path: Path) -> None:
    """Rendered for Kubernetes as imported: the placeholders need no filling, the UDF containers
    run beside each vertex."""
    out = tmp_path / "pipeline.yaml"
    assert main(["import", "numaflow", str(PIPELINES / f"{name}.yaml"), "-o", str(out)]) == 0
    assert main(["render", str(out), "--image", "natsflow:test", "-o", str(tmp_path / "k8s")]) == 0
    for vertex in EXPECTED[name]["spec"]["vertices"]:
        docs = list(yaml.safe_load_all((tmp_path / "k8s" / f"{vertex['name']}.yaml").read_text()))
        (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
        images = sorted(c["image"] for c in deployment["spec"]["template"]["spec"]["containers"])
        programs = [b["numaflow"] for b in (vertex.get("udf"), vertex.get("source"), vertex.get("sink"),
                                            (vertex.get("source") or {}).get("transformer")) if b and "numaflow" in b]
        assert images == sorted(["natsflow:test", *(p["container"]["image"] for p in programs)])
        if "source" not in vertex:
            assert [d["kind"] for d in docs].count("ScaledObject") == 1


def test_cli_exits_non_zero_and_writes_nothing_unless_allow_partial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pipeline.yaml"
    source = PIPELINES / "partial.yaml"
    assert main(["import", "numaflow", str(source), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{source}: 6 settings have no natsflow equivalent:\n" in err
    assert (f"{source}: spec.vertices[1].scale.lookbackSeconds: natsflow scales on the lag of the vertex's consumer "
            "per replica (KEDA's rule): set scale.lagThreshold instead\n") in err
    assert err.endswith("nothing written: fix the above, or rerun with --allow-partial to write the rest\n")
    assert not out.exists()

    assert main(["import", "numaflow", str(source), "-o", str(out), "--allow-partial"]) == 0
    text = out.read_text()
    assert "# Not converted (6):\n# - spec.limits.concurrency: natsflow processes" in text
    load_pipeline(out, check_handlers=False)


def test_cli_rejects_what_is_not_a_numaflow_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "mono.yaml"
    bad.write_text("apiVersion: numaflow.numaproj.io/v1alpha1\nkind: MonoVertex\nmetadata: {name: m}\nspec: {}\n")
    assert main(["import", "numaflow", str(bad)]) == 1
    assert capsys.readouterr().err == (
        f"{bad}: not a valid Numaflow Pipeline:\n{bad}: kind: expected apiVersion numaflow.numaproj.io/v1alpha1 and "
        "kind Pipeline, got numaflow.numaproj.io/v1alpha1 MonoVertex (MonoVertex, ISBService and ServingPipeline "
        "resources are not converted)\n")
    bad.write_text((PIPELINES / "simple.yaml").read_text().replace("min: 1", "min: one", 1))
    assert main(["import", "numaflow", str(bad)]) == 1
    assert capsys.readouterr().err.endswith(f"{bad}: spec.vertices[1].scale.min: expected a whole number, got 'one'\n")


def test_comments_of_each_vertex_block_are_found_by_vertex_name() -> None:
    text = ("# top\nspec:\n  vertices:\n  # above in\n  - name: in\n    source: {http: {}}  # trailing\n"
            "  - source: {generator: {}}\n    name: gen  # after the name\n    env:\n    - name: X\n"
            "      value: 'a # not a comment'\n  edges:  # not a vertex's\n  - {from: in, to: out}\n")
    found = file_comments(text)
    assert found.leading == ["top"]
    assert found.vertices == {"in": ["above in", "trailing"], "gen": ["after the name"]}


def test_a_file_with_an_isb_service_and_a_pipeline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Numaflow's quick start applies an InterStepBufferService and a Pipeline: one file, two documents."""
    both = tmp_path / "both.yaml"
    isb = ("apiVersion: numaflow.numaproj.io/v1alpha1\nkind: InterStepBufferService\nmetadata: {name: default}\n"
           "spec: {jetstream: {version: latest}}\n")
    both.write_text(isb + "---\n" + (PIPELINES / "simple.yaml").read_text())
    out = tmp_path / "pipeline.yaml"
    assert main(["import", "numaflow", str(both), "-o", str(out)]) == 0
    assert capsys.readouterr().err.startswith(
        f"{both}: line 1: note: a document of kind InterStepBufferService, not converted: natsflow needs no "
        "InterStepBufferService: its buffers are JetStream streams on the NATS server it connects to\n")
    assert read_yaml_file(out) == EXPECTED["simple"]

    both.write_text(both.read_text() + "---\n" + (PIPELINES / "even_odd.yaml").read_text())
    assert main(["import", "numaflow", str(both)]) == 1
    assert capsys.readouterr().err == (f"{both}: expected one Pipeline among the file's 3 documents, found 2 (line 6, "
                                       "line 37): convert one file per Pipeline\n")


def test_builtins_and_other_settings_without_equivalent_are_dropped() -> None:
    doc = read_yaml_file(PIPELINES / "simple.yaml")
    doc["spec"]["vertices"][1]["udf"] = {"builtin": {"name": "cat"}}
    doc["spec"]["vertices"][1]["scale"] = {"min": 1, "max": 3, "cron": {"schedules": []}}
    doc["spec"]["vertices"][2]["sink"]["onSuccess"] = {"log": {}}
    doc["spec"]["lifecycle"] = {"desiredPhase": "Pausing"}
    result = convert(doc)
    assert result.report.errors == []
    assert [(f.path, f.why) for f in result.report.dropped] == [
        ("spec.lifecycle.desiredPhase", "natsflow's desired phases are Running and Paused, not 'Pausing'"),
        ("spec.vertices[1].udf.builtin", "natsflow has no built-in functions: write the function as a Python map "
                                         "handler or run it as a Numaflow SDK program"),
        ("spec.vertices[1].scale.cron", "natsflow has no scheduled replica counts"),
        ("spec.vertices[2].sink.onSuccess", "only a user-defined sink's ON_SUCCESS responses go to onSuccess; "
                                            "natsflow's built-in sinks send none"),
    ]
    assert result.pipeline["spec"]["vertices"][1]["udf"] == {"numaflow": {"command": TODO}}
    assert result.pipeline["spec"]["vertices"][2]["sink"] == {"log": {}}
    parse_pipeline(result.pipeline, check_handlers=False)


def test_go_durations() -> None:
    assert [go_duration(t) for t in ("60s", "1m30s", "1.5h", "300ms", "0", "2h45m")] == [
        60.0, 90.0, 5400.0, 0.3, 0.0, 9900.0]
    assert [go_duration(t) for t in ("", "1d", "5 s", "s", "1m30")] == [None] * 5

