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


@pytest.mark.parametrize(
    "mutate, path, reason",
    [
        (lambda r: r["spec"]["vertices"][1]["udf"].update({"flatmap": {"handler": "a:b"}}),
         "spec.vertices[1].udf", "a udf must set exactly one of: map, flatmap, batchMap, mapStream, reduce, command (found 2)"),
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
