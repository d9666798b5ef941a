"""The descriptor a program vertex gets in NATSFLOW_DESCRIPTOR (docs/protocol.md §2)."""

from __future__ import annotations

from pathlib import Path

from framework.isb.descriptor import vertex_descriptor
from framework.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_descriptor_names_input_outputs_and_tag_conditions():
    p = load_pipeline(REPO / "examples" / "polyglot" / "pipeline.yaml", check_handlers=False)
    d = vertex_descriptor(p, "node")
    assert d["protocol"] == "1" and d["kind"] == "udf"
    assert d["input"] == {"stream": "nf_polyglot_node", "consumer": "nf_polyglot_node",
                          "deadLetterSubject": "nfdlq.polyglot.node"}
    go, python = d["outputs"]
    assert go == {"to": "go", "subject": "nf.polyglot.go.node", "stream": "nf_polyglot_go", "softLimit": 24000,
                  "onFull": "retryUntilSuccess", "tags": {"operator": "or", "values": ["even"]}}
    assert python["tags"] == {"operator": "not", "values": ["even"]} and "partitions" not in python


def test_outputs_into_a_partitioned_reduce_list_every_partition():
    p = load_pipeline(REPO / "examples" / "anomaly" / "pipeline.yaml", check_handlers=False)
    (out,) = vertex_descriptor(p, "metric")["outputs"]
    # no unpartitioned buffer exists: a writer that ignores `partitions` fails instead of stalling
    assert out["subject"] is None and out["stream"] is None
    assert out["partitions"] == [{"subject": "nf.anomaly.detect_p0.metric", "stream": "nf_anomaly_detect_p0"},
                                 {"subject": "nf.anomaly.detect_p1.metric", "stream": "nf_anomaly_detect_p1"}]
