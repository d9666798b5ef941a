"""Rendered manifests validated as data: Kubernetes kinds against their schemas (Kubernetes
K8S_VERSION), KEDA and prometheus-operator objects against their own CRDs (vendored in
tests/data/crds), plus the CEL rule; and what makes them deployable as they are: security context,
resources, PDBs, checksums, re-appliable Job, sinks' replicas, credentials only through Secrets."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import pytest
import yaml

from framework.isb.provision import buffer_stream_config, dlq_stream_config
from framework.k8s.render import RenderError, RenderOptions, inline_credentials, render_pipeline
from framework.local.scaling import desired_replicas
from framework.local.supervisor import vertex_command
from framework.spec import Scale, SecretRef, SpecError, load_pipeline, parse_pipeline

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "tests" / "data" / "crds"
K8S_VERSION = "1.35.0"
EXAMPLES = sorted(p.parent.name for p in (REPO / "examples").glob("*/pipeline.yaml"))
CRD_GROUPS = ("keda.sh/", "monitoring.coreos.com/")


def crd_schema(obj: dict) -> dict:
    group = obj["apiVersion"].split("/")[0]
    path = CRDS / f"{group}_{obj['kind'].lower()}s.yaml"
    if not path.exists():
        message = f"CRD schema {path} is missing (vendored in tests/data/crds, see its README)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(message)
        pytest.skip(message)
    crd = yaml.safe_load(path.read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def validate(obj: dict) -> None:
    if obj["apiVersion"].startswith(CRD_GROUPS):
        jsonschema.validate(obj, crd_schema(obj))
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    if obj["kind"] == "ScaledObject":
        spec = obj["spec"]
        assert spec["minReplicaCount"] <= spec.get("maxReplicaCount", 100)  # the CRD's CEL rule
        for t in spec["triggers"]:
            assert all(isinstance(v, str) for v in t["metadata"].values())


def rendered(example: str, **opts) -> dict[str, list[dict]]:
    path = REPO / "examples" / example / "pipeline.yaml"
    p = load_pipeline(path, check_handlers=False)
    return render_pipeline(p, path.read_text(), RenderOptions(image="registry.local/natsflow:test", **opts))


def objects(files: dict[str, list[dict]]) -> list[dict]:
    return [o for objs in files.values() for o in objs]


def pod_specs(files: dict[str, list[dict]]) -> Iterator[tuple[dict, dict]]:
    """(object, pod template) of every Deployment and Job."""
    for obj in objects(files):
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


# A pipeline with every credential field given as a secretRef or a ${VAR}.
def ref(name: str, key: str) -> dict:
    return {"secretRef": {"name": name, "key": key}}


CREDENTIALS = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "creds"},
    "spec": {
        "sideInputs": [{"name": "rules", "handler": "x:y", "trigger": {"schedule": "@every 5s"}}],
        "vertices": [
            {"name": "web", "source": {"http": {"port": 8080, "auth": {"token": ref("web", "token")}}}},
            {"name": "tx", "source": {"kafka": {
                "brokers": ["${KAFKA_BROKERS}"], "topic": "tx", "consumerGroup": "g",
                "sasl": {"mechanism": "scram-sha-512", "username": ref("kafka", "user"),
                         "password": ref("kafka", "password")}}},
             "scale": {"min": 1, "max": 4}},
            {"name": "queue", "source": {"rabbitmq": {"url": ref("mq", "url"), "queue": "q"}},
             "scale": {"max": 3}},
            {"name": "stream", "source": {"redisStreams": {"url": ref("redis", "url"), "stream": "s", "group": "g"}},
             "scale": {"max": 2}},
            {"name": "upstream", "source": {"jetstream": {"url": ref("upstream-nats", "url"), "stream": "UP"}}},
            {"name": "mqtt", "source": {"mqtt": {"url": ref("mqtt", "url"), "topic": "t"}}},
            {"name": "enrich", "udf": {"map": {"handler": "x:y"}, "env": {"API_KEY": ref("llm", "api-key"),
                                                                         "MODE": "fast"}},
             "scale": {"max": 3}, "sideInputs": ["rules"]},
            {"name": "db", "sink": {"postgres": {"dsn": ref("pg", "dsn"), "table": "${PG_TABLE:-events}"},
                                    "retryStrategy": {"onFailure": "fallback"},
                                    "fallback": {"redis": {"url": ref("redis", "url"), "list": "failed"}}}},
            {"name": "hook", "sink": {"http": {"url": "https://hooks.example.com/in",
                                               "headers": {"Authorization": ref("hook", "authorization"),
                                                           "X-Team": "data"}}},
             "scale": {"min": 0}},
            {"name": "out", "sink": {"nats": {"url": "${OUT_NATS_URL}", "subject": "out"}}},
        ],
        "edges": [*({"from": s, "to": "enrich"} for s in ("web", "tx", "queue", "stream", "upstream", "mqtt")),
                  {"from": "enrich", "to": "db"}, {"from": "enrich", "to": "hook"}, {"from": "enrich", "to": "out"}],
    },
}


def render_doc(doc: dict, env: dict[str, str] | None = None, **opts) -> dict[str, list[dict]]:
    """What `natsflow render` does with a file: nothing from the environment, unset ${VAR}s kept."""
    p = parse_pipeline(doc, file="p.yaml", check_handlers=False, env=env or {}, allow_unset=True)
    return render_pipeline(p, yaml.safe_dump(doc, sort_keys=False), RenderOptions(image="i:1", **opts))


CASES = {**{ex: lambda ex=ex: rendered(ex) for ex in EXAMPLES},
         "credentials": lambda: render_doc(CREDENTIALS, create_namespace=True, service_monitor=True),
         "anomaly+auth": lambda: rendered("anomaly", monitoring_secret="nats-mon")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_validates(case):
    files = CASES[case]()
    kinds = [o["kind"] for o in objects(files)]
    for obj in objects(files):
        validate(obj)
    assert kinds.count("Job") == 1 and kinds.count("ConfigMap") == 1
    if case == "credentials":
        assert {"Namespace", "ServiceMonitor", "PodDisruptionBudget", "TriggerAuthentication"} <= set(kinds)


def test_the_schemas_are_vendored_and_the_k8s_version_pinned():
    """A clone without ../shared validates too: no skip for a missing CRD."""
    for name in ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml",
                 "monitoring.coreos.com_servicemonitors.yaml"):
        assert (CRDS / name).is_file(), name
    assert "Apache License" in (CRDS / "LICENSE").read_text()[:300]
    assert K8S_VERSION in kubernetes_validate.utils.all_versions()


def test_validators_reject_broken_objects():
    """The checks above can fail: a typo in a Deployment, an integer trigger value and a bad
    ServiceMonitor endpoint are caught."""
    files = rendered("sentiment", service_monitor=True)
    dep, so = files["classify.yaml"][:2]
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(Exception, match="imagePullPolicyy"):
        validate(dep)
    so["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 100
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        validate(so)
    sm = next(o for o in files["pipeline.yaml"] if o["kind"] == "ServiceMonitor")
    sm["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    with pytest.raises(jsonschema.ValidationError, match="thirty seconds"):
        validate(sm)


def test_sentiment_objects_match_the_spec():
    files = rendered("sentiment")
    dep, so, pdb = files["classify.yaml"]
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
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == dep["spec"]["selector"]
    src = files["in.yaml"]
    assert [o["kind"] for o in src] == ["Deployment", "Service"]  # a source has no lag: no ScaledObject
    assert src[0]["spec"]["replicas"] == 1
    job = files["pipeline.yaml"][1]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["natsflow", "provision"]


def test_every_pod_meets_the_restricted_profile():
    files = render_doc(CREDENTIALS)
    files.update({f"polyglot/{k}": v for k, v in rendered("polyglot").items()})  # foreign images and the sidecar
    count = 0
    for obj, template in pod_specs(files):
        spec = template["spec"]
        assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                           "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}, obj
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp == [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]
        for c in spec["containers"]:
            count += 1
            assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}, (obj["metadata"]["name"], c["name"])
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert set(c["resources"]) == {"requests", "limits"}
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    assert count >= 18  # 10 + 4 vertices, the manager, the Job (x2), the Go vertex's sidecar


def test_resources_default_and_merge_key_by_key():
    doc = copy.deepcopy(CREDENTIALS)
    doc["spec"]["vertices"][6]["resources"] = {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}
    files = render_doc(doc)
    enrich = files["enrich.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert enrich == {"requests": {"cpu": "2", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}
    db = files["db.yaml"][0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert db == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    job = files["pipeline.yaml"][1]
    assert job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "500m", "memory": "256Mi"}


def test_a_pdb_for_every_vertex_that_can_run_more_than_one_replica():
    files = render_doc(CREDENTIALS)
    with_pdb = {o["metadata"]["name"] for o in objects(files) if o["kind"] == "PodDisruptionBudget"}
    assert with_pdb == {"creds-tx", "creds-queue", "creds-stream", "creds-enrich"}  # scale.max > 1
    assert {n.removeprefix("sentiment-") for n in (o["metadata"]["name"] for o in objects(rendered("sentiment"))
                                                   if o["kind"] == "PodDisruptionBudget")} == {"classify"}


def test_editing_the_pipeline_rolls_pods_and_renames_the_job(tmp_path):
    def render(doc: dict, image: str = "i:1") -> dict[str, list[dict]]:
        p = parse_pipeline(doc, file="p.yaml", check_handlers=False, env={}, allow_unset=True)
        return render_pipeline(p, yaml.safe_dump(doc), RenderOptions(image=image))

    def checksums(files: dict) -> set[str]:
        return {t["metadata"]["annotations"]["natsflow.io/pipeline-checksum"] for _, t in pod_specs(files)}

    def job(files: dict) -> dict:
        return next(o for o in files["pipeline.yaml"] if o["kind"] == "Job")

    before = render(CREDENTIALS)
    edited = copy.deepcopy(CREDENTIALS)
    edited["spec"]["vertices"][6]["udf"]["env"]["MODE"] = "slow"
    after = render(edited)
    assert len(checksums(before)) == 1 and len(checksums(after)) == 1  # one file, one checksum on every pod
    assert checksums(before) != checksums(after)
    assert render(CREDENTIALS)["db.yaml"] == before["db.yaml"]  # same file, same objects: nothing rolls
    names = {job(before)["metadata"]["name"], job(after)["metadata"]["name"],
             job(render(CREDENTIALS, image="i:2"))["metadata"]["name"]}
    assert len(names) == 3 and all(n.startswith("creds-provision-") and len(n) == len("creds-provision-") + 8
                                   for n in names)
    assert job(before)["spec"]["ttlSecondsAfterFinished"] == 3600
    long = copy.deepcopy(CREDENTIALS)
    long["metadata"]["name"] = "p" * 44  # the longest pipeline name validation accepts
    assert len(job(render(long))["metadata"]["name"]) <= 63


def test_sinks_run_one_replica_unless_the_spec_asks_for_zero():
    files = render_doc(CREDENTIALS)

    def min_replicas(vertex: str) -> int:
        dep, so = files[f"{vertex}.yaml"][:2]
        assert "replicas" not in dep["spec"]  # KEDA owns it: a re-apply must not reset a scaled vertex
        return so["spec"]["minReplicaCount"]

    assert min_replicas("db") == 1 and min_replicas("out") == 1  # scale.min not written
    assert min_replicas("hook") == 0  # scale: {min: 0} written: scale to zero
    assert min_replicas("enrich") == 0  # a UDF scales to zero by default
    assert min_replicas("tx") == 1  # a source on its upstream's backlog: scale.min
    # sources nothing scales state their replicas: at least one
    assert [files[f"{v}.yaml"][0]["spec"]["replicas"] for v in ("web", "upstream", "mqtt")] == [1, 1, 1]


def test_no_secret_value_lands_in_any_object(monkeypatch, tmp_path):
    """Secret values exist only in the environment of the machine that renders: none reaches a
    rendered object (every string searched), whatever is set there."""
    values = {"KAFKA_BROKERS": "k-secret-1:9092", "PG_TABLE": "t_secret_2", "OUT_NATS_URL": "nats://u:pw-secret-3@n"}
    monkeypatch.setenv("NATSFLOW_SECRET_PG_DSN", "postgresql://u:pw-secret-4@db/x")
    monkeypatch.setenv("NATSFLOW_SECRET_WEB_TOKEN", "tok-secret-5")
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(CREDENTIALS, sort_keys=False))
    p = load_pipeline(path, check_handlers=False, env={}, allow_unset=True)  # as cmd_render
    files = render_pipeline(p, path.read_text(), RenderOptions(image="i:1", service_monitor=True))
    every = [s for obj in objects(files) for s in strings(obj)]
    for secret in ("secret-1", "secret-2", "secret-3", "secret-4", "secret-5"):
        assert not [s for s in every if secret in s], secret
    assert inline_credentials(p) == []  # nothing credential-like written into the file


def test_secret_refs_become_secret_key_refs_on_the_containers_that_need_them():
    files = render_doc(CREDENTIALS)

    def container(vertex: str) -> dict:
        return files[f"{vertex}.yaml"][0]["spec"]["template"]["spec"]["containers"][0]

    def secret_env(c: dict) -> dict[str, dict]:
        return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", []) if "valueFrom" in e}

    assert secret_env(container("web")) == {"NATSFLOW_SECRET_WEB_TOKEN": {"name": "web", "key": "token"}}
    assert secret_env(container("tx")) == {"NATSFLOW_SECRET_KAFKA_USER": {"name": "kafka", "key": "user"},
                                           "NATSFLOW_SECRET_KAFKA_PASSWORD": {"name": "kafka", "key": "password"}}
    # the sink's and its fallback's; one variable for the Redis URL
    assert secret_env(container("db")) == {"NATSFLOW_SECRET_PG_DSN": {"name": "pg", "key": "dsn"},
                                           "NATSFLOW_SECRET_REDIS_URL": {"name": "redis", "key": "url"}}
    assert secret_env(container("hook")) == {
        "NATSFLOW_SECRET_HOOK_AUTHORIZATION": {"name": "hook", "key": "authorization"}}
    assert secret_env(container("upstream")) == {
        "NATSFLOW_SECRET_UPSTREAM_NATS_URL": {"name": "upstream-nats", "key": "url"}}
    # udf.env: under the program's own variable name, straight from the Secret
    assert secret_env(container("enrich")) == {"API_KEY": {"name": "llm", "key": "api-key"}}
    assert {"name": "MODE", "value": "fast"} in container("enrich")["env"]
    assert secret_env(container("out")) == {}
    # every container reads NATS settings and the file's ${VAR}s (optional Secret)
    for _, template in pod_specs(files):
        for c in template["spec"]["containers"]:
            assert c["envFrom"] == [{"secretRef": {"name": "natsflow-nats"}},
                                    {"secretRef": {"name": "creds-env", "optional": True}}]
    # KEDA reads the Kafka login and the AMQP URL from the very Secrets the spec names
    ta = {o["metadata"]["name"]: o["spec"]["secretTargetRef"] for o in objects(files)
          if o["kind"] == "TriggerAuthentication"}
    assert ta["creds-tx-scaler"] == [{"parameter": "username", "name": "kafka", "key": "user"},
                                     {"parameter": "password", "name": "kafka", "key": "password"}]
    assert ta["creds-queue-scaler"] == [{"parameter": "host", "name": "mq", "key": "url"}]
    assert ta["creds-stream-scaler"] == [{"parameter": "address", "name": "creds-stream-scaler", "key": "address"},
                                         {"parameter": "password", "name": "creds-stream-scaler", "key": "password"}]
    kafka = next(o for o in files["tx.yaml"] if o["kind"] == "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert kafka["bootstrapServersFromEnv"] == "KAFKA_BROKERS" and "bootstrapServers" not in kafka


def test_the_config_map_keeps_the_file_and_names_the_variables():
    text = yaml.safe_dump(CREDENTIALS, sort_keys=False)
    p = parse_pipeline(CREDENTIALS, file="p.yaml", check_handlers=False, env={}, allow_unset=True)
    cm = render_pipeline(p, text, RenderOptions(image="i:1", env_secret="shared-env"))["pipeline.yaml"][0]
    assert cm["data"]["pipeline.yaml"] == text
    assert cm["metadata"]["annotations"] == {"natsflow.io/env-vars": "KAFKA_BROKERS,OUT_NATS_URL,PG_TABLE",
                                             "natsflow.io/env-secret": "shared-env"}
    db = p.vertex("db").sink.postgres
    assert db.table == "events" and db.dsn == SecretRef(name="pg", key="dsn")  # render took the default


def test_render_cli_warns_for_inline_credentials_and_lists_what_the_pods_read(tmp_path):
    doc = copy.deepcopy(CREDENTIALS)
    v = doc["spec"]["vertices"]
    v[0]["source"]["http"]["auth"]["token"] = "plain-token"
    v[8]["sink"]["http"]["headers"]["Authorization"] = "Bearer abc"
    v[2]["source"]["rabbitmq"]["url"] = "amqp://guest:guest@mq:5672/"
    v[7]["sink"]["postgres"]["dsn"] = "host=db user=app password=${PG_PASSWORD}"  # a reference: fine
    v[6]["udf"]["env"]["API_KEY"] = "sk-live"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    res = subprocess.run([sys.executable, "-m", "framework.cli", "render", str(tmp_path / "p.yaml"), "--image", "i:1",
                          "-o", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr
    warned = [line.split(": ")[2] for line in res.stderr.splitlines() if line.startswith("warning:")]
    assert warned == ["spec.vertices[0].source.http.auth.token", "spec.vertices[2].source.rabbitmq.url",
                      "spec.vertices[6].udf.env.API_KEY", "spec.vertices[8].sink.http.headers.Authorization"]
    assert "use {secretRef: {name, key}} or ${VAR}" in res.stderr
    assert "  pg/dsn" not in res.stderr and "  kafka/password -> NATSFLOW_SECRET_KAFKA_PASSWORD" in res.stderr
    assert "  PG_PASSWORD  (spec.vertices[7].sink.postgres.dsn)" in res.stderr
    assert "  PG_TABLE  (spec.vertices[7].sink.postgres.table, default 'events')" in res.stderr


def test_two_secrets_sharing_one_variable_are_refused():
    doc = copy.deepcopy(CREDENTIALS)
    doc["spec"]["vertices"][8]["sink"]["http"]["headers"]["Authorization"] = ref("pg-dsn", "x")
    doc["spec"]["vertices"][7]["sink"]["postgres"]["dsn"] = ref("pg", "dsn-x")
    with pytest.raises(RenderError) as err:
        render_doc(doc)
    assert str(err.value) == ("spec.vertices[8].sink.http.headers.Authorization: secretRef pg-dsn/x and pg/dsn-x "
                              "(spec.vertices[7].sink.postgres.dsn) both become NATSFLOW_SECRET_PG_DSN_X; "
                              "rename a key or a Secret")


def test_a_value_keda_reads_must_be_literal_or_exactly_one_variable():
    doc = copy.deepcopy(CREDENTIALS)
    doc["spec"]["vertices"][1]["source"]["kafka"]["brokers"] = ["${KAFKA_HOST}:9092"]
    with pytest.raises(RenderError, match=r"spec.vertices\[1\].source.kafka.brokers: KEDA reads this value itself"):
        render_doc(doc)


def test_namespace_service_monitor_and_scrape_annotations():
    plain = rendered("polyglot")
    assert not [o for o in objects(plain) if o["kind"] in ("Namespace", "ServiceMonitor")]
    annotated = {obj["metadata"]["name"] for obj, t in pod_specs(plain)
                 if t["metadata"]["annotations"].get("prometheus.io/scrape") == "true"}
    # worker pods serve /metrics; foreign programs (go: own image, node: a command) need not
    assert annotated == {"polyglot-words", "polyglot-python", "polyglot-out"}
    assert not any("prometheus.io/scrape" in t["metadata"]["annotations"]
                   for _, t in pod_specs(rendered("polyglot", scrape_annotations=False)))
    files = rendered("sentiment", create_namespace=True, service_monitor=True, namespace="pipelines")
    ns, svc, sm = (next(o for o in files["pipeline.yaml"] if o["kind"] == k) for k in ("Namespace", "Service",
                                                                                         "ServiceMonitor"))
    assert files["pipeline.yaml"][0] is ns and ns["metadata"]["name"] == "pipelines"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["ports"][0]["targetPort"] == "metrics"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    scraped = [t for _, t in pod_specs(files) if t["metadata"]["labels"].get("natsflow.io/metrics") == "true"]
    assert len(scraped) == 4  # the four vertices; not the provisioning Job
    assert all(svc["spec"]["selector"].items() <= t["metadata"]["labels"].items() for t in scraped)


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
    assert [d["kind"] for d in docs] == ["Deployment", "ScaledObject", "PodDisruptionBudget"]
    assert "&id" not in (tmp_path / "classify.yaml").read_text()
    # the pipeline file stays readable in the ConfigMap
    assert "  pipeline.yaml: |\n    apiVersion: natsflow.io/v1\n" in (tmp_path / "pipeline.yaml").read_text()


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


def test_committed_deploy_manifests_are_current_and_valid():
    path = REPO / "examples" / "sentiment" / "pipeline.yaml"
    p = load_pipeline(path, check_handlers=False, env={}, allow_unset=True)
    files = render_pipeline(p, path.read_text(), RenderOptions(image="registry.example.com/natsflow-sentiment:0.1.0",
                                                              namespace="pipelines", create_namespace=True))
    committed = REPO / "deploy" / "keda" / "sentiment"
    for name, objs in files.items():
        assert list(yaml.safe_load_all((committed / name).read_text())) == objs, \
            f"deploy/keda/sentiment/{name} is stale: re-run natsflow render (see deploy/keda/kustomization.yaml)"
        for obj in objs:
            validate(obj)
    for doc in yaml.safe_load_all((REPO / "deploy" / "keda" / "nats-cluster.yaml").read_text()):
        validate(doc)
    validate(yaml.safe_load((REPO / "deploy" / "keda" / "nats-secret.example.yaml").read_text()))


def test_a_reduce_scales_out_and_rolls_like_any_vertex():
    """Partition leases keep two pods off one partition, so a keyed reduce takes scale.max > 1
    (validation used to reject it) and needs no Recreate strategy any more."""
    doc = yaml.safe_load((REPO / "examples" / "anomaly" / "pipeline.yaml").read_text())
    detect = next(v for v in doc["spec"]["vertices"] if v["name"] == "detect")
    detect["scale"] = {"min": 1, "max": 4, "lagThreshold": 500}
    p = parse_pipeline(doc, file="p.yaml", check_handlers=False)
    objs = {o["kind"]: o for o in render_pipeline(p, yaml.safe_dump(doc), RenderOptions(image="i"))["detect.yaml"]}
    assert set(objs) == {"Deployment", "ScaledObject", "PodDisruptionBudget"}  # a drain takes one pod at a time
    for obj in objs.values():
        validate(obj)
    dep, so = objs["Deployment"], objs["ScaledObject"]
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert so["spec"]["minReplicaCount"] == 1 and so["spec"]["maxReplicaCount"] == 4
    assert {t["metadata"]["consumer"] for t in so["spec"]["triggers"]} == {"nf_anomaly_detect_p0", "nf_anomaly_detect_p1"}


def test_foreign_vertices_get_their_image_or_command_and_the_descriptor():
    files = rendered("polyglot")
    go = files["go.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    node = files["node.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    py = files["python.yaml"][0]["spec"]["template"]["spec"]["containers"][0]
    # udf.container: its own image and command, wiring in NATSFLOW_DESCRIPTOR, no worker probes
    assert go["image"] == "ghcr.io/example/shout-go:1.0" and go["command"] == ["/shout-vertex"]
    assert "args" not in go and "livenessProbe" not in go
    assert go["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]  # no pipeline file, a writable /tmp
    env = {e["name"]: e.get("value") for e in go["env"]}
    desc = json.loads(env["NATSFLOW_DESCRIPTOR"])
    assert desc["input"]["stream"] == "nf_polyglot_go" and desc["outputs"][0]["subject"] == "nf.polyglot.out.go"
    assert go["envFrom"][0] == {"secretRef": {"name": "natsflow-nats"}}
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
    return render_doc(doc)["in.yaml"]


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
    assert {r["name"] for r in ta["spec"]["secretTargetRef"]} == {"up-in-scaler"}
    assert "secret-pw" not in json.dumps(objs[1:])  # credentials come from the Secret, never inline


def test_sources_without_a_readable_backlog_or_max_one_get_no_scaled_object():
    assert [o["kind"] for o in render_source({"kafka": {"brokers": ["k:9092"], "topic": "t", "consumerGroup": "g"}},
                                             {"max": 1})] == ["Deployment"]
    assert [o["kind"] for o in render_source({"mqtt": {"topic": "t"}}, {"max": 1})] == ["Deployment"]
    objs = render_source({"redisStreams": {"url": "redis://r:6379/0", "stream": "s", "group": "g"}}, {"max": 3})
    assert [o["kind"] for o in objs] == ["Deployment", "ScaledObject", "PodDisruptionBudget"]  # no password: no auth


def test_provision_job_applies_the_pipelines_buffer_settings(tmp_path):
    """`render` passes spec.buffers to the cluster through the provisioning Job: it runs
    `natsflow provision` on the pipeline file the ConfigMap mounts, which carries them as written."""
    text = (REPO / "examples" / "sentiment" / "pipeline.yaml").read_text().replace(
        "spec:\n", "spec:\n  buffers: {replicas: 3, maxAge: 1h}\n", 1)
    (tmp_path / "pipeline.yaml").write_text(text)
    p = load_pipeline(tmp_path / "pipeline.yaml", check_handlers=False)
    objs = [o for objs in render_pipeline(p, text, RenderOptions(image="img:1")).values() for o in objs]
    [job] = [o for o in objs if o["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    command = container.get("command", []) + container.get("args", [])
    assert command[:2] == ["natsflow", "provision"], command
    file = Path(command[-1])
    [mount] = [m for m in container["volumeMounts"] if file.parent == Path(m["mountPath"])]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    [config_map] = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == volume["configMap"]["name"]]
    mounted = tmp_path / "mounted.yaml"
    mounted.write_text(config_map["data"][file.name])
    provisioned = load_pipeline(mounted, check_handlers=False)
    assert provisioned.buffers_for("classify").replicas == 3 and provisioned.buffers_for(None).replicas == 3
    assert (buffer_stream_config(provisioned, "classify").num_replicas, dlq_stream_config(provisioned, "rest").max_age) == (3, 3600.0)
