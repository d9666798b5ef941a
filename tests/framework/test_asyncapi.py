"""`natsflow asyncapi`: every buffer and edge of a pipeline in one AsyncAPI 3.0 document."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

REPO = Path(__file__).resolve().parents[2]


def test_asyncapi_document_lists_every_buffer_and_edge():
    res = subprocess.run([sys.executable, "-m", "framework.cli", "asyncapi", "examples/anomaly/pipeline.yaml",
                          "--servers", "nats://nats.example:4222"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["asyncapi"] == "3.0.0" and doc["info"]["title"] == "natsflow pipeline anomaly"
    addresses = {c["address"] for c in doc["channels"].values()}
    # readers: one wildcard subject per buffer (the reduce has 2 partitions)
    assert {"nf.anomaly.metric.*", "nf.anomaly.detect_p0.*", "nf.anomaly.detect_p1.*",
            "nf.anomaly.anomalies.*", "nf.anomaly.normal.*"} <= addresses
    # writers: one subject per edge (and partition)
    assert {"nf.anomaly.metric.ticks", "nf.anomaly.detect_p0.metric", "nf.anomaly.detect_p1.metric",
            "nf.anomaly.anomalies.detect", "nf.anomaly.normal.detect"} <= addresses
    edge = doc["channels"]["detect writes to anomalies"]
    assert "tags match" in edge["description"] and "Nf-Event-Time" in edge["description"]
    assert any("nats.example" in str(s) for s in doc["servers"].values())


def test_envelope_headers_and_declared_payload_schemas():
    res = subprocess.run([sys.executable, "-m", "framework.cli", "asyncapi", "examples/polyglot/pipeline.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    messages = doc["components"]["messages"]
    headers = doc["components"]["schemas"]["NatsflowHeaders"]
    assert set(headers["required"]) == {"Nats-Msg-Id", "Nf-Id", "Nf-Event-Time"}
    assert all(m["headers"] == {"$ref": "#/components/schemas/NatsflowHeaders"} for m in messages.values())
    assert all(m["correlationId"]["location"] == "$message.header#/Nf-Id" for m in messages.values())
    # `node` declares outputSchema: its edges and the buffers only it writes carry that schema
    node_out = {"$ref": "#/components/schemas/nodeOutput"}
    assert doc["components"]["schemas"]["nodeOutput"]["type"] == "string"
    assert messages["node writes to go:Message"]["payload"] == node_out
    assert messages["go reads nf_polyglot_go:SubscribeMessage"]["payload"] == node_out
    assert messages["go writes to out:Message"]["payload"] == {"$ref": "#/components/schemas/Envelope"}


@pytest.fixture(scope="session")
def asyncapi_schema(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """AsyncAPI's own JSON Schema for 3.0.0, from the @asyncapi/specs npm package (pinned)."""
    where = tmp_path_factory.mktemp("asyncapi-specs")
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix", str(where),
                    "@asyncapi/specs@6.11.1"], check=True, timeout=300, capture_output=True)
    path = where / "node_modules" / "@asyncapi" / "specs" / "schemas" / "3.0.0-without-$id.json"
    return json.loads(path.read_text())


@pytest.mark.parametrize("example", ["anomaly", "polyglot"])
def test_documents_validate_against_the_asyncapi_schema(example, asyncapi_schema):
    res = subprocess.run([sys.executable, "-m", "framework.cli", "asyncapi", f"examples/{example}/pipeline.yaml"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    doc = json.loads(res.stdout)
    validator = jsonschema.Draft7Validator(asyncapi_schema)
    assert [e.message for e in validator.iter_errors(doc)] == []
    doc["operations"][next(iter(doc["operations"]))]["action"] = "consume"  # not send/receive
    assert any("consume" in e.message for e in validator.iter_errors(doc))
