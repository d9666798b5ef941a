"""Rendered manifests validated as data: Kubernetes kinds against their schemas, KEDA objects
against KEDA's own CRDs (v2.20.2, beside the checkout in ../shared/keda-crds), plus the CEL rule."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from framework.render import RenderOptions, render_pipeline
from framework.scaling import desired_replicas
from framework.spec import Scale, SpecError, load_pipeline, parse_pipeline
from framework.supervisor import vertex_command

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO.parent / "shared" / "keda-crds"
K8S_VERSION = "1.30.0"


def crd_schema(kind: str) -> dict:
    path = CRDS / f"keda.sh_{kind.lower()}s.yaml"
    if not path.exists():
        pytest.skip(f"KEDA CRDs not found at {CRDS} (they live beside the checkout in shared/)")
    crd = yaml.safe_load(path.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate(obj: dict) -> None:
    if obj["apiVersion"].startswith("keda.sh/"):
        jsonschema.validate(obj, crd_schema(obj["kind"]))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def rendered(example: str, **opts) -> dict[str, list[dict]]:
    path = REPO / "examples" / example / "pipeline.yaml"
    p = load_pipeline(path, check_handlers=False)
    return render_pipeline(p, path.read_text(), RenderOptions(image="registry.local/natsflow:test", **opts))


@pytest.mark.parametrize("example", ["sentiment", "anomaly", "clicks", "polyglot", "fraud"])
def test_every_object_validates(example):
    files = rendered(example)
    kinds = [o["kind"] for objs in files.values() for o in objs]
    for objs in files.values():
        for obj in objs:
            validate(obj)
            if obj["kind"] == "ScaledObject":
                spec = obj["spec"]
                assert spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)  # the CRD's CEL rule
                for t in spec["triggers"]:
                    assert all(isinstance(v, str) for v in t["metadata"].values())
    assert kinds.count("Job") == 1 and kinds.count("ConfigMap") == 1


def test_sentiment_objects_match_the_spec():
    files = rendered("sentiment")
    dep, so = files["classify.yaml"]
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--pipeline", "/etc/natsflow/pipeline.yaml", "--vertex", "classify"]
    assert dep["metadata"]["labels"]["app.kubernetes.io/component"] == "classify"
    assert so["spec"]["minReplicaCount"] == 0 and so["spec"]["maxReplicaCount"] == 5
    assert so["spec"]["cooldownPeriod"] >= 30  # >= the consumer's ack wait
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"] == {
        "stream": "nf_sentiment_classify", "consumer": "nf_sentiment_classify", "lagThreshold": "100",
        "activationLagThreshold": "0", "natsServerMonitoringEndpoint": "nats-headless.nats.svc.cluster.local:8222",
        "account": "$G"}
    src = files["in.yaml"]
    assert [o["kind"] for o in src] == ["Deployment", "Service"]  # a source has no lag: no ScaledObject
    assert src[0]["spec"]["replicas"] == 1
    job = files["pipeline.yaml"][1]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["natsflow", "provision"]


def test_partitioned_reduce_gets_a_trigger_per_partition_and_auth_from_a_secret():
    files = rendered("anomaly", monitoring_secret="nats-mon")
    so = files["detect.yaml"][1]
    assert [t["metadata"]["stream"] for t in so["spec"]["triggers"]] == ["nf_anomaly_detect_p0", "nf_anomaly_detect_p1"]
    assert all("natsServerMonitoringEndpoint" not in t["metadata"] for t in so["spec"]["triggers"])
    auth = files["pipeline.yaml"][2]
    assert auth["kind"] == "TriggerAuthentication"
    validate(auth)


def test_cli_render_writes_files_and_kustomization(tmp_path):
    res = subprocess.run([sys.executable, "-m", "framework.cli", "render", "examples/sentiment/pipeline.yaml",
                          "--image", "img:1", "-o", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    kust = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert kust["resources"] == ["classify.yaml", "in.yaml", "pipeline.yaml", "positive.yaml", "rest.yaml"]
    docs = list(yaml.safe_load_all((tmp_path / "classify.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "ScaledObject"]
    assert "&id" not in (tmp_path / "classify.yaml").read_text()


SCALE = Scale(min=0, max=5, lagThreshold=100, cooldownPeriod="60s")


@pytest.mark.parametrize("lag, current, idle, expected", [
    (0, 0, None, 0),            # nothing to do at zero
    (1, 0, 0, 1),               # one message wakes the vertex (activation threshold 0)
    (250, 1, 0, 3),             # ceil(250 / 100)
    (10_000, 3, 0, 5),          # clamped to max
    (0, 3, 10, 1),              # inactive but cooling down: HPA floor of 1
    (0, 3, 61, 0),              # cooldown over: back to zero
])
def test_scaling_rule(lag, current, idle, expected):
    assert desired_replicas(lag, current, SCALE, idle).desired == expected


def test_min_one_ignores_activation():
    s = Scale(min=2, max=4, lagThreshold=10, activationLagThreshold=1000)
    assert desired_replicas(0, 2, s, math.inf).desired == 2
    assert desired_replicas(35, 2, s, 0).desired == 4


def test_validators_reject_broken_objects():
    """The checks above can fail: a typo in a Deployment and an integer trigger value are caught."""
    dep, so = rendered("sentiment")["classify.yaml"]
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolicyy"):
        validate(dep)
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        validate(so)


def test_committed_deploy_manifests_are_current_and_valid():
    from framework.render import RenderOptions, render_pipeline

    path = REPO / "examples" / "sentiment" / "pipeline.yaml"
    p = load_pipeline(path, check_handlers=False)
    files = render_pipeline(p, path.read_text(), RenderOptions(image="registry.example.com/natsflow-sentiment:0.1.0",
                                                              namespace="pipelines"))
    committed = REPO / "deploy" / "keda" / "sentiment"
    for name, objs in files.items():
        assert list(yaml.safe_load_all((committed / name).read_text())) == objs, \
            f"deploy/keda/sentiment/{name} is stale: re-run natsflow render (see deploy/keda/kustomization.yaml)"
    for doc in yaml.safe_load_all((REPO / "deploy" / "keda" / "nats-cluster.yaml").read_text()):
        validate(doc)
    validate(yaml.safe_load((REPO / "deploy" / "keda" / "nats-secret.example.yaml").read_text()))


def test_reduce_is_replaced_not_overlapped():
    dep = rendered("anomaly")["detect.yaml"][0]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}


def test_foreign_vertices_get_their_image_or_command_and_the_descriptor():
    files = rendered("polyglot")
    go = files["go.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    node = files["node.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    py = files["python.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    # udf.container: its own image and command, wiring in NATSFLOW_DESCRIPTOR, no worker probes
    assert go["image"] == "ghcr.io/example/shout-go:1.0" and go["command"] == ["/shout-vertex"]
    assert "args" not in go and "livenessProbe" not in go
    env = {e["name"]: e.get("value") for e in go["env"]}
    desc = json.loads(env["NATSFLOW_DESCRIPTOR"])
    assert desc["input"]["stream"] == "nf_polyglot_go" and desc["outputs"][0]["subject"] == "nf.polyglot.out.go"
    assert go["envFrom"] == [{"secretRef": {"name": "natsflow-nats"}}]
    # beside it, natsflow's watermark proxy speaks for it (it publishes no watermarks itself)
    proxy = files["go.yaml"][0]["spec"]["template"]["spec"]["containers"][1]
    assert proxy["name"] == "watermark-proxy" and proxy["image"] == "registry.local/natsflow:test"
    assert proxy["command"][-4:] == ["--pipeline", "/etc/natsflow/pipeline.yaml", "--vertex", "go"]
    assert len(files["python.yaml"][0]["spec"]["template"]["spec"]["containers"]) == 1
    # udf.command only: that command in the pipeline image
    assert node["image"] == "registry.local/natsflow:test" and node["command"] == ["node", "node/vertex.js"]
    # a Python handler: the worker with its probes
    assert py["args"][-1] == "python" and py["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "go" in {o["metadata"]["name"].removeprefix("polyglot-") for o in files["go.yaml"][1:]
                    if o["kind"] == "ScaledObject"}


def test_container_only_vertex_cannot_run_locally(tmp_path):
    path = tmp_path / "p.yaml"
    text = (REPO / "examples" / "polyglot" / "pipeline.yaml").read_text().replace(
        "        command: [./go/shout-vertex]\n", "")
    path.write_text(text)
    p = load_pipeline(path, check_handlers=False)
    with pytest.raises(SpecError) as err:
        vertex_command(p, path, "go")
    assert "spec.vertices[2].udf.command" in str(err.value) and "only udf.container" in str(err.value)


def render_source(source: dict, scale: dict) -> list[dict]:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "up"},
           "spec": {"vertices": [{"name": "in", "source": source, "scale": scale},
                                 {"name": "out", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    p = parse_pipeline(doc, file="p.yaml", check_handlers=False)
    return render_pipeline(p, yaml.safe_dump(doc), RenderOptions(image="i"))["in.yaml"]


@pytest.mark.parametrize("source, trigger_type, meta, auth", [
    ({"kafka": {"brokers": ["k1:9092", "k2:9092"], "topic": "tx", "consumerGroup": "g",
                "sasl": {"mechanism": "scram-sha-512", "username": "u", "password": "secret-pw"}}},
     "kafka", {"bootstrapServers": "k1:9092,k2:9092", "topic": "tx", "consumerGroup": "g", "lagThreshold": "50",
               "sasl": "scram_sha512"}, ["username", "password"]),
    ({"redisStreams": {"url": "redis://:secret-pw@redis:6380/2", "stream": "s", "group": "g"}},
     "redis-streams", {"address": "redis:6380", "stream": "s", "consumerGroup": "g", "lagCount": "50",
                       "databaseIndex": "2"}, ["password"]),
    ({"rabbitmq": {"url": "amqp://u:secret-pw@mq:5672/", "queue": "q"}},
     "rabbitmq", {"queueName": "q", "mode": "QueueLength", "value": "50"}, ["host"]),
])
def test_sources_with_an_upstream_backlog_scale_on_it(source, trigger_type, meta, auth):
    objs = render_source(source, {"min": 1, "max": 6, "lagThreshold": 50})
    so = next(o for o in objs if o["kind"] == "ScaledObject")
    for obj in objs:
        validate(obj)
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == trigger_type and meta.items() <= trigger["metadata"].items()
    assert so["spec"]["minReplicaCount"] == 1 and so["spec"]["maxReplicaCount"] == 6
    ta = next(o for o in objs if o["kind"] == "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == ta["metadata"]["name"] == "up-in-scaler"
    assert [r["parameter"] for r in ta["spec"]["secretTargetRef"]] == auth
    assert "secret-pw" not in json.dumps(objs[1:])  # credentials come from the Secret, never inline


def test_sources_without_a_readable_backlog_or_max_one_get_no_scaled_object():
    assert [o["kind"] for o in render_source({"kafka": {"brokers": ["k:9092"], "topic": "t", "consumerGroup": "g"}},
                                             {"max": 1})] == ["Deployment"]
    assert [o["kind"] for o in render_source({"mqtt": {"topic": "t"}}, {"max": 1})] == ["Deployment"]
    objs = render_source({"redisStreams": {"url": "redis://r:6379/0", "stream": "s", "group": "g"}}, {"max": 3})
    assert [o["kind"] for o in objs] == ["Deployment", "ScaledObject"]  # no password: no auth object
