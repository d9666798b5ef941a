"""Kubernetes objects for a pipeline: every vertex its own Deployment, scaled by KEDA on its lag.

Per vertex: a Deployment running `natsflow vertex` (the image's entrypoint), and for vertices that
own a buffer a keda.sh/v1alpha1 ScaledObject with one nats-jetstream trigger per buffer partition;
a Service for HTTP sources. Per pipeline: a ConfigMap holding the pipeline file, a Job that runs
`natsflow provision` so streams and durable consumers exist before any worker starts (KEDA cannot
wake a vertex whose consumer does not exist yet), and with `spec.sideInputs` a Deployment of the
side-input manager.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from . import buffer as b
from .protocol import vertex_descriptor
from .scaling import effective_cooldown
from .spec import Pipeline, Vertex
from .watermark_proxy import needs_proxy

PIPELINE_MOUNT = "/etc/natsflow"
MANAGER_SUFFIX = "sideinputs-manager"  # a vertex may not take this name (spec validation)
METRICS_PORT = 9090
GRACE_EXTRA_S = 10


@dataclass(frozen=True)
class RenderOptions:
    image: str
    namespace: str = "default"
    nats_secret: str = "natsflow-nats"  # keys: NATS_URL and optionally NATS_TOKEN, NATS_USER, ...
    monitoring_endpoint: str = "nats-headless.nats.svc.cluster.local:8222"
    account: str = "$G"
    monitoring_secret: str | None = None  # keys: endpoint, account -> a TriggerAuthentication


def labels(p: Pipeline, v: Vertex | None = None) -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "natsflow",
        "app.kubernetes.io/instance": p.name,
        "app.kubernetes.io/part-of": p.name,
        "app.kubernetes.io/managed-by": "natsflow",
        "natsflow.io/pipeline": p.name,
    }
    if v is not None:
        out["app.kubernetes.io/component"] = v.name
        out["natsflow.io/vertex"] = v.name
    return out


def object_name(p: Pipeline, suffix: str) -> str:
    return f"{p.name}-{suffix}"[:63].rstrip("-")


def grace_seconds(p: Pipeline, v: Vertex) -> int:
    """Long enough for the worker's own drain (NATSFLOW_GRACE_SECONDS) plus a margin."""
    return int(max(30, p.limits_for(v.name).ack_wait)) + GRACE_EXTRA_S


def _meta(p: Pipeline, name: str, opts: RenderOptions, v: Vertex | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": labels(p, v)}


def render_config_map(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(p, object_name(p, "pipeline"), opts),
            "data": {"pipeline.yaml": pipeline_text}}


def _volume(p: Pipeline) -> tuple[dict, dict]:
    volume = {"name": "pipeline", "configMap": {"name": object_name(p, "pipeline")}}
    mount = {"name": "pipeline", "mountPath": PIPELINE_MOUNT, "readOnly": True}
    return volume, mount


def render_provision_job(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = _volume(p)
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(p, object_name(p, "provision"), opts),
        "spec": {
            "backoffLimit": 6,
            "template": {
                "metadata": {"labels": labels(p)},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [{
                        "name": "provision", "image": opts.image,
                        "command": ["natsflow", "provision", f"{PIPELINE_MOUNT}/pipeline.yaml"],
                        "envFrom": [{"secretRef": {"name": opts.nats_secret}}],
                        "volumeMounts": [mount],
                    }],
                    "volumes": [volume],
                },
            },
        },
    }


def render_deployment(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = _volume(p)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if v.source is not None and v.source.http is not None:
        ports.append({"name": "http", "containerPort": v.source.http.port})
    probe = {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "vertex", "image": opts.image,
        "args": ["--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml", "--vertex", v.name],
        "env": [{"name": "NATSFLOW_METRICS_PORT", "value": str(METRICS_PORT)},
                {"name": "NATSFLOW_GRACE_SECONDS", "value": str(grace_seconds(p, v) - GRACE_EXTRA_S)}],
        "envFrom": [{"secretRef": {"name": opts.nats_secret}}],
        "ports": ports,
        "livenessProbe": probe,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [mount],
    }
    if v.udf is not None and v.udf.is_program:
        _as_program(container, p, v)
    if v.udf is not None and v.udf.env:
        container["env"] = container["env"] + [{"name": k, "value": val} for k, val in sorted(v.udf.env.items())]
    if v.resources is not None:
        container["resources"] = {k: dict(val) for k, val in
                                   (("requests", v.resources.requests), ("limits", v.resources.limits)) if val}
    replicas = max(1, v.scale.min) if v.kind == "source" else v.scale.min
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(p, object_name(p, v.name), opts, v),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"natsflow.io/pipeline": p.name, "natsflow.io/vertex": v.name}},
            # A reduce must never have two pods reading its partitions: replace, don't overlap.
            "strategy": {"type": "Recreate"} if v.udf is not None and v.udf.reduce is not None else
                        {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(p, v)},
                "spec": {
                    "terminationGracePeriodSeconds": grace_seconds(p, v),
                    "containers": [container, *_watermark_sidecar(p, v, opts, mount)],
                    "volumes": [volume],
                },
            },
        },
    }


def _watermark_sidecar(p: Pipeline, v: Vertex, opts: RenderOptions, mount: dict) -> list[dict[str, Any]]:
    """A program vertex publishes no watermarks itself: a small natsflow container beside it does,
    from its ack floor (framework/watermark_proxy.py), so reduces downstream close windows."""
    if not needs_proxy(p, v.name):
        return []
    return [{"name": "watermark-proxy", "image": opts.image,
             "command": ["natsflow", "watermark-proxy", "--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml",
                         "--vertex", v.name],
             "envFrom": [{"secretRef": {"name": opts.nats_secret}}],
             "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
             "volumeMounts": [mount]}]


def _as_program(container: dict[str, Any], p: Pipeline, v: Vertex) -> None:
    """A vertex in another language: `udf.container` (its own image) or else `udf.command` in the
    pipeline image; its wiring comes in NATSFLOW_DESCRIPTOR. A foreign program need not serve the
    worker's health endpoints (the protocol makes them optional), so its own image gets no probes."""
    assert v.udf is not None
    container.pop("args")
    container["env"] = container["env"] + [{"name": "NATSFLOW_DESCRIPTOR", "value": json.dumps(vertex_descriptor(p, v.name))}]
    own = v.udf.container
    if own is None:
        container["command"] = list(v.udf.command or [])
        return
    container["image"] = own.image
    if own.command:
        container["command"] = list(own.command)
    if own.args:
        container["args"] = list(own.args)
    for key in ("livenessProbe", "readinessProbe", "volumeMounts"):
        container.pop(key)


def render_side_input_manager(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    """The side-input manager: one pod (Recreate, so two never run handlers at once), not scaled."""
    volume, mount = _volume(p)
    name = object_name(p, MANAGER_SUFFIX)
    # Its own role label: vertex pods never carry it, so no vertex (even one named "sideinputs")
    # matches this selector.
    pod_labels = {**labels(p), "app.kubernetes.io/component": "sideinputs", "natsflow.io/role": "sideinputs"}
    container = {
        "name": "sideinputs", "image": opts.image,
        "command": ["natsflow", "sideinputs", f"{PIPELINE_MOUNT}/pipeline.yaml"],
        "env": [{"name": "NATSFLOW_METRICS_PORT", "value": str(METRICS_PORT)}],
        "envFrom": [{"secretRef": {"name": opts.nats_secret}}],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [mount],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**_meta(p, name, opts), "labels": pod_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"natsflow.io/pipeline": p.name, "natsflow.io/role": "sideinputs"}},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": {"labels": pod_labels},
                         "spec": {"containers": [container], "volumes": [volume]}},
        },
    }


def render_scaled_object(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    s = v.scale
    triggers = []
    for part in b.partitions(p, v.name):
        meta = {
            "stream": b.stream_name(p.name, v.name, part),
            "consumer": b.consumer_name(p.name, v.name, part),
            "lagThreshold": str(s.lag_threshold),
            "activationLagThreshold": str(s.activation_lag_threshold),
        }
        trigger: dict[str, Any] = {"type": "nats-jetstream", "name": f"lag-{part or 0}", "metadata": meta,
                                   "useCachedMetrics": True}
        if opts.monitoring_secret:
            trigger["authenticationRef"] = {"name": object_name(p, "nats-monitoring"), "kind": "TriggerAuthentication"}
        else:
            meta["natsServerMonitoringEndpoint"] = opts.monitoring_endpoint
            meta["account"] = opts.account
        triggers.append(trigger)
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": _meta(p, object_name(p, v.name), opts, v),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(p, v.name)},
            "minReplicaCount": s.min,
            "maxReplicaCount": s.max,
            "pollingInterval": max(1, int(s.polling_interval)),  # KEDA polls in whole seconds
            # Messages held by a killed pod count as lag until their ack wait ends: keep the
            # vertex up at least that long so it comes back to redeliver them.
            "cooldownPeriod": int(effective_cooldown(p, v.name)),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                "stabilizationWindowSeconds": int(s.scale_down_stabilization)}}}},
            "triggers": triggers,
        },
    }


# Sources whose upstream has its own backlog KEDA can read: their replicas follow it (a consumer
# group shares the work). With scale.max 1 they stay a plain Deployment, as other sources do.
UPSTREAM_SCALED = ("kafka", "redisStreams", "rabbitmq")
KAFKA_SASL = {"plain": "plaintext", "scram-sha-256": "scram_sha256", "scram-sha-512": "scram_sha512"}


def scaler_secret(p: Pipeline, v: Vertex) -> str:
    """The Secret a user creates with a source's upstream credentials for KEDA (docs: deploy/keda)."""
    return object_name(p, f"{v.name}-scaler")


def upstream_trigger(p: Pipeline, v: Vertex) -> tuple[dict[str, Any], list[str]]:
    """KEDA trigger reading the upstream backlog of a source, and the credential parameters it
    takes from the source's scaler Secret (never inlined: the spec's passwords stay out of it)."""
    assert v.source is not None
    s, kind = v.scale, v.source.kind
    cfg = getattr(v.source, kind)
    auth: list[str] = []
    if kind == "kafka":
        meta = {"bootstrapServers": ",".join(cfg.brokers), "consumerGroup": cfg.consumer_group, "topic": cfg.topic,
                "lagThreshold": str(s.lag_threshold), "activationLagThreshold": str(s.activation_lag_threshold),
                "offsetResetPolicy": "earliest"}
        if cfg.sasl is not None:
            meta["sasl"] = KAFKA_SASL[cfg.sasl.mechanism.value]
            auth += ["username", "password"]
        if cfg.tls is not None:
            meta["tls"] = "enable"
            auth += [k for k, present in (("ca", cfg.tls.ca_file), ("cert", cfg.tls.cert_file),
                                          ("key", cfg.tls.key_file)) if present]
        return {"type": "kafka", "name": "upstream-lag", "metadata": meta}, auth
    url = urlsplit(cfg.url)
    if kind == "redisStreams":
        meta = {"address": f"{url.hostname or '127.0.0.1'}:{url.port or 6379}", "stream": cfg.stream,
                "consumerGroup": cfg.group, "lagCount": str(s.lag_threshold),
                "activationLagCount": str(s.activation_lag_threshold),
                "databaseIndex": (url.path.strip("/") or "0")}
        if url.scheme == "rediss":
            meta["enableTLS"] = "true"
        if url.password:
            auth.append("password")
        return {"type": "redis-streams", "name": "upstream-lag", "metadata": meta}, auth
    # rabbitmq: the AMQP URL carries credentials, so it always comes from the Secret (key `host`)
    meta = {"protocol": "amqp", "queueName": cfg.queue, "mode": "QueueLength", "value": str(s.lag_threshold),
            "activationValue": str(s.activation_lag_threshold)}
    return {"type": "rabbitmq", "name": "upstream-lag", "metadata": meta}, ["host"]


def render_source_scaling(p: Pipeline, v: Vertex, opts: RenderOptions) -> list[dict[str, Any]]:
    trigger, auth = upstream_trigger(p, v)
    objs = []
    if auth:
        trigger["authenticationRef"] = {"name": scaler_secret(p, v), "kind": "TriggerAuthentication"}
        objs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                     "metadata": _meta(p, scaler_secret(p, v), opts, v),
                     "spec": {"secretTargetRef": [{"parameter": k, "name": scaler_secret(p, v), "key": k}
                                                  for k in auth]}})
    so = render_scaled_object(p, v, opts)
    so["spec"]["triggers"] = [trigger]
    return [so, *objs]


def render_trigger_auth(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": _meta(p, object_name(p, "nats-monitoring"), opts),
        "spec": {"secretTargetRef": [
            {"parameter": "natsServerMonitoringEndpoint", "name": opts.monitoring_secret, "key": "endpoint"},
            {"parameter": "account", "name": opts.monitoring_secret, "key": "account"},
        ]},
    }


def render_service(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(p, object_name(p, v.name), opts, v),
        "spec": {
            "selector": {"natsflow.io/pipeline": p.name, "natsflow.io/vertex": v.name},
            "ports": [{"name": "http", "port": v.source.http.port, "targetPort": "http"}],
        },
    }


def render_pipeline(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, list[dict[str, Any]]]:
    """Objects grouped by file: `pipeline.yaml` (ConfigMap, provisioning Job, auth) and one file
    per vertex."""
    files: dict[str, list[dict[str, Any]]] = {
        "pipeline.yaml": [render_config_map(p, pipeline_text, opts), render_provision_job(p, opts)]}
    if opts.monitoring_secret:
        files["pipeline.yaml"].append(render_trigger_auth(p, opts))
    if p.spec.side_inputs:
        files["pipeline.yaml"].append(render_side_input_manager(p, opts))
    for v in p.spec.vertices:
        objs = [render_deployment(p, v, opts)]
        if v.kind != "source":
            objs.append(render_scaled_object(p, v, opts))
        elif v.source.kind in UPSTREAM_SCALED and v.scale.max > 1:
            objs.extend(render_source_scaling(p, v, opts))
        if v.source is not None and v.source.http is not None:
            objs.append(render_service(p, v, opts))
        files[f"{v.name}.yaml"] = objs
    return files


def write_rendered(files: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objs in files.items():
        path = out_dir / name
        # a JSON round trip unshares nested dicts, so the YAML has no &anchors
        path.write_text(yaml.safe_dump_all(json.loads(json.dumps(objs)), sort_keys=False))
        written.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": sorted(files)}
    (out_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    written.append(out_dir / "kustomization.yaml")
    return written
