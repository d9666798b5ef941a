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


def test_descriptor_carries_retry_watermark_settings_and_every_header_name(tmp_path):
    doc = (REPO / "examples" / "polyglot" / "pipeline.yaml").read_text()
    doc = doc.replace("spec:\n", "spec:\n  watermark: {maxDelay: 2s, publisherTimeout: 4s}\n", 1)
    doc = doc.replace("command: [node, node/vertex.js]",
                      "command: [node, node/vertex.js]\n        retry: {attempts: 5, interval: 0.2, factor: 3, cap: 1}")
    (tmp_path / "p.yaml").write_text(doc)
    d = vertex_descriptor(load_pipeline(tmp_path / "p.yaml", check_handlers=False), "node")
    # attempts counts every call: 5 = the first call and four retries
    assert d["retry"] == {"attempts": 5, "intervalMs": 200, "factor": 3.0, "capMs": 1000}
    assert d["timeoutMs"] == 300_000
    assert d["watermark"] == {"bucket": "nf_polyglot_wm", "maxDelayMs": 2000, "publisherTimeoutMs": 4000,
                              "unknown": -1}
    assert d["headers"] == {"msgId": "Nats-Msg-Id", "id": "Nf-Id", "keys": "Nf-Keys",
                            "eventTime": "Nf-Event-Time", "error": "Nf-Error", "errorVertex": "Nf-Error-Vertex"}
