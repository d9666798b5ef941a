"""Kubernetes objects for a pipeline: every vertex its own Deployment, scaled by KEDA on its lag.

Per vertex: a Deployment running `natsflow vertex` (the image's entrypoint), and for vertices that
own a buffer a keda.sh/v1alpha1 ScaledObject with one nats-jetstream trigger per buffer partition;
a Service for HTTP sources; a PodDisruptionBudget when it may run more than one replica. Per
pipeline: a ConfigMap holding the pipeline file, a Job that runs `natsflow provision` so streams
and durable consumers exist before any worker starts (KEDA cannot wake a vertex whose consumer does
not exist yet), with `spec.sideInputs` a Deployment of the side-input manager, and optionally the
Namespace and a ServiceMonitor.

Every pod is ready to run as it is: resource requests and limits, the restricted Pod Security
profile (non-root 10001, read-only root filesystem with an emptyDir on /tmp), a checksum of the
pipeline file (editing it rolls the pods), Prometheus scrape annotations. Credentials reach pods
only through Secrets: each `secretRef` as `valueFrom.secretKeyRef`, `${VAR}` references from the
optional Secret `<pipeline>-env` (envFrom); the ConfigMap keeps the file's text as it is.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from framework.isb import names
from framework.isb.descriptor import vertex_descriptor
from framework.local.scaling import effective_cooldown
from framework.spec.secrets import env_name, refs_in, vertex_path, vertex_refs
from framework.spec.model import Pipeline, Resources, SecretRef, Vertex
from framework.watermark.proxy import needs_proxy

PIPELINE_MOUNT = "/etc/natsflow"
MANAGER_SUFFIX = "sideinputs-manager"  # a vertex may not take this name (spec validation)
METRICS_PORT = 9090
GRACE_EXTRA_S = 10
RUN_AS = 10001  # the image's user and group (Dockerfile)
PROVISION_TTL_S = 3600  # a finished provisioning Job is deleted after an hour (a new content gets a new name)
CHECKSUM = "natsflow.io/pipeline-checksum"
METRICS_LABEL = "natsflow.io/metrics"  # on pods that serve /metrics (the metrics Service selects them)
# Defaults per container; `vertices[].resources` overrides them key by key for the vertex container.
DEFAULT_RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "vertex": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
    "watermark-proxy": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}},
    "provision": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
    "sideinputs": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
}


@dataclass(frozen=True)
class RenderOptions:
    image: str
    namespace: str = "default"
    nats_secret: str = "natsflow-nats"  # keys: NATS_URL and optionally NATS_TOKEN, NATS_USER, ...
    monitoring_endpoint: str = "nats-headless.nats.svc.cluster.local:8222"
    account: str = "$G"
    monitoring_secret: str | None = None  # keys: endpoint, account -> a TriggerAuthentication
    env_secret: str | None = None  # the optional Secret with the file's ${VAR}s; default <pipeline>-env
    create_namespace: bool = False
    service_monitor: bool = False  # a metrics Service and a prometheus-operator ServiceMonitor
    scrape_annotations: bool = True  # prometheus.io/* on pods that serve /metrics


class RenderError(ValueError):
    """A pipeline that cannot be rendered as written; `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


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


def selector(p: Pipeline, v: Vertex) -> dict[str, str]:
    return {"natsflow.io/pipeline": p.name, "natsflow.io/vertex": v.name}


def object_name(p: Pipeline, suffix: str) -> str:
    return f"{p.name}-{suffix}"[:63].rstrip("-")


def env_secret(p: Pipeline, opts: RenderOptions) -> str:
    return opts.env_secret or object_name(p, "env")


def grace_seconds(p: Pipeline, v: Vertex) -> int:
    """Long enough for the worker's own drain (NATSFLOW_GRACE_SECONDS) plus a margin."""
    return int(max(30, p.limits_for(v.name).ack_wait)) + GRACE_EXTRA_S


def min_replicas(v: Vertex) -> int:
    """Sources always run; a sink keeps one replica (its outage shows, its connection stays warm)
    unless the spec asks for `scale.min: 0`; UDFs scale to zero by default."""
    if v.kind == "source" or (v.kind == "sink" and "min" not in v.scale.model_fields_set):
        return max(1, v.scale.min)
    return v.scale.min


def checksum(pipeline_text: str) -> str:
    return hashlib.sha256(pipeline_text.encode()).hexdigest()


def _meta(p: Pipeline, name: str, opts: RenderOptions, v: Vertex | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": labels(p, v)}


# ---- what every container and pod gets ---------------------------------------------------------


def _volume(p: Pipeline) -> tuple[dict, dict]:
    volume = {"name": "pipeline", "configMap": {"name": object_name(p, "pipeline")}}
    mount = {"name": "pipeline", "mountPath": PIPELINE_MOUNT, "readOnly": True}
    return volume, mount


def _env_from(p: Pipeline, opts: RenderOptions) -> list[dict[str, Any]]:
    """NATS settings, and the file's `${VAR}`s (optional: a file with none needs no such Secret)."""
    return [{"secretRef": {"name": opts.nats_secret}},
            {"secretRef": {"name": env_secret(p, opts), "optional": True}}]


def _secret_env(name: str, ref: SecretRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _resources(container: str, override: Resources | None = None) -> dict[str, dict[str, str]]:
    out = {k: dict(v) for k, v in DEFAULT_RESOURCES[container].items()}
    if override is not None:
        out["requests"].update(override.requests)
        out["limits"].update(override.limits)
    return out


def _pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """The restricted Pod Security profile for every pod: non-root with the image's user, the
    runtime's seccomp profile, no privilege escalation, no capabilities, a read-only root
    filesystem with a writable emptyDir on /tmp (the only place a worker or library writes)."""
    for c in containers:
        c["securityContext"] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}}
        c["volumeMounts"] = [*c.get("volumeMounts", []), {"name": "tmp", "mountPath": "/tmp"}]
    return {
        **extra,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": containers,
        "volumes": [*volumes, {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
    }


def _pod_metadata(pod_labels: dict[str, str], pipeline_text: str, opts: RenderOptions, metrics: bool) -> dict[str, Any]:
    """Labels, and annotations: the pipeline file's checksum (a changed file is a changed pod
    template, so the Deployment rolls) and, where the pod serves /metrics, Prometheus's."""
    annotations = {CHECKSUM: checksum(pipeline_text)}
    if metrics and opts.scrape_annotations:
        annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                            "prometheus.io/path": "/metrics"})
    return {"labels": {**pod_labels, METRICS_LABEL: "true"} if metrics else pod_labels, "annotations": annotations}


# ---- objects -----------------------------------------------------------------------------------


def render_namespace(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    """The pods meet the restricted profile, so the namespace enforces it."""
    pss = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/managed-by": "natsflow", **pss}}}


def render_config_map(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    meta = _meta(p, object_name(p, "pipeline"), opts)
    names = sorted({r.name for r in p.env_refs})
    if names:  # what the pods read from the env Secret, for whoever creates it
        meta["annotations"] = {"natsflow.io/env-vars": ",".join(names), "natsflow.io/env-secret": env_secret(p, opts)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"pipeline.yaml": pipeline_text}}


def provision_job_name(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> str:
    """A Job's pod template cannot change: a new pipeline or image is a new Job, re-appliable."""
    digest = hashlib.sha256(f"{pipeline_text}\0{opts.image}".encode()).hexdigest()[:8]
    return f"{object_name(p, 'provision')[:54].rstrip('-')}-{digest}"


def render_provision_job(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = _volume(p)
    container = {
        "name": "provision", "image": opts.image,
        "command": ["natsflow", "provision", f"{PIPELINE_MOUNT}/pipeline.yaml"],
        "envFrom": _env_from(p, opts),
        "resources": _resources("provision"),
        "volumeMounts": [mount],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": _meta(p, provision_job_name(p, pipeline_text, opts), opts),
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": PROVISION_TTL_S,
            "template": {
                "metadata": _pod_metadata(labels(p), pipeline_text, opts, metrics=False),
                "spec": _pod_spec([container], [volume], restartPolicy="OnFailure"),
            },
        },
    }


def _vertex_env(p: Pipeline, v: Vertex) -> list[dict[str, Any]]:
    """The worker's settings, each secretRef of its connector under its NATSFLOW_SECRET_* name
    (framework/spec/secrets.py reads it there), and `udf.env` (secretRefs from their Secret)."""
    env = [{"name": "NATSFLOW_METRICS_PORT", "value": str(METRICS_PORT)},
           {"name": "NATSFLOW_GRACE_SECONDS", "value": str(grace_seconds(p, v) - GRACE_EXTRA_S)}]
    seen: set[str] = set()
    for _, ref in vertex_refs(p, v):
        if env_name(ref) not in seen:
            seen.add(env_name(ref))
            env.append(_secret_env(env_name(ref), ref))
    for k, val in sorted(v.udf.env.items() if v.udf is not None else []):
        env.append(_secret_env(k, val) if isinstance(val, SecretRef) else {"name": k, "value": val})
    return env


def render_deployment(p: Pipeline, v: Vertex, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = _volume(p)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if v.source is not None and v.source.http is not None:
        ports.append({"name": "http", "containerPort": v.source.http.port})
    probe = {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "vertex", "image": opts.image,
        "args": ["--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml", "--vertex", v.name],
        "env": _vertex_env(p, v),
        "envFrom": _env_from(p, opts),
        "ports": ports,
        "resources": _resources("vertex", v.resources),
        "livenessProbe": probe,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [mount],
    }
    if v.udf is not None and v.udf.is_program:
        _as_program(container, p, v)
    # KEDA owns the replica count of a scaled vertex: a `replicas` in the manifest would reset it
    # on every re-apply (Kubernetes' advice for HPA targets), so only unscaled ones state it.
    replicas = {} if keda_scaled(v) else {"replicas": min_replicas(v)}
    serves_metrics = not (v.udf is not None and v.udf.is_program)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(p, object_name(p, v.name), opts, v),
        "spec": {
            **replicas,
            "selector": {"matchLabels": selector(p, v)},
            # A reduce too: partition leases keep two pods from reading one partition.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": _pod_metadata(labels(p, v), pipeline_text, opts, metrics=serves_metrics),
                "spec": _pod_spec([container, *_watermark_sidecar(p, v, opts, mount)], [volume],
                                  terminationGracePeriodSeconds=grace_seconds(p, v)),
            },
        },
    }


def _watermark_sidecar(p: Pipeline, v: Vertex, opts: RenderOptions, mount: dict) -> list[dict[str, Any]]:
    """A program vertex publishes no watermarks itself: a small natsflow container beside it does,
    from its ack floor (framework/watermark/proxy.py), so reduces downstream close windows."""
    if not needs_proxy(p, v.name):
        return []
    return [{"name": "watermark-proxy", "image": opts.image,
             "command": ["natsflow", "watermark-proxy", "--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml",
                         "--vertex", v.name],
             "envFrom": _env_from(p, opts),
             "resources": _resources("watermark-proxy"),
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


def render_side_input_manager(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
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
        "envFrom": _env_from(p, opts),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": _resources("sideinputs"),
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
            "template": {"metadata": _pod_metadata(pod_labels, pipeline_text, opts, metrics=True),
                         "spec": _pod_spec([container], [volume])},
        },
    }


def render_pdb(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take one replica at a time. maxUnavailable, not
    minAvailable, so a vertex scaled to zero or one never blocks a drain."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(p, object_name(p, v.name), opts, v),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(p, v)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def render_metrics_service(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    """A headless Service over every pod of the pipeline that serves /metrics, for the ServiceMonitor."""
    meta = _meta(p, object_name(p, "metrics"), opts)
    meta["labels"] = {**meta["labels"], METRICS_LABEL: "true"}
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": "None", "selector": {"natsflow.io/pipeline": p.name, METRICS_LABEL: "true"},
                 "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]},
    }


def render_service_monitor(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": _meta(p, object_name(p, "metrics"), opts),
        "spec": {"selector": {"matchLabels": {"natsflow.io/pipeline": p.name, METRICS_LABEL: "true"}},
                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
                 "podTargetLabels": ["natsflow.io/vertex"]},
    }


def render_scaled_object(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    s = v.scale
    triggers = []
    for part in names.partitions(p, v.name):
        meta = {
            "stream": names.stream_name(p.name, v.name, part),
            "consumer": names.consumer_name(p.name, v.name, part),
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
            "minReplicaCount": min_replicas(v),
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
_WHOLE_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def scaler_secret(p: Pipeline, v: Vertex) -> str:
    """The Secret a user creates with a source's upstream credentials for KEDA (docs: deploy/keda)."""
    return object_name(p, f"{v.name}-scaler")


def _keda_param(meta: dict[str, str], param: str, value: str, path: str) -> None:
    """A value KEDA reads itself: literal, or exactly `${VAR}`, which KEDA takes from the
    Deployment's environment (`<param>FromEnv`); anything else it could not substitute."""
    whole = _WHOLE_REF.match(value)
    if whole:
        meta[f"{param}FromEnv"] = whole.group(1)
    elif "${" in value:
        raise RenderError([(path, f"KEDA reads this value itself and cannot substitute {value!r}: write it "
                                  "literally or as exactly ${VAR}")])
    else:
        meta[param] = value


# An auth parameter of KEDA's: the Secret (name, key) it comes from.
AuthRefs = list[tuple[str, str, str]]


def _kafka_trigger(p: Pipeline, v: Vertex, cfg: Any) -> tuple[dict[str, Any], AuthRefs]:
    s, where, own = v.scale, f"{vertex_path(p, v)}.source.kafka", scaler_secret(p, v)
    meta = {"lagThreshold": str(s.lag_threshold), "activationLagThreshold": str(s.activation_lag_threshold),
            "offsetResetPolicy": "earliest"}
    _keda_param(meta, "bootstrapServers", ",".join(cfg.brokers), f"{where}.brokers")
    _keda_param(meta, "consumerGroup", cfg.consumer_group, f"{where}.consumerGroup")
    _keda_param(meta, "topic", cfg.topic, f"{where}.topic")
    auth: AuthRefs = []
    if cfg.sasl is not None:
        meta["sasl"] = KAFKA_SASL[cfg.sasl.mechanism.value]
        for param, value in (("username", cfg.sasl.username), ("password", cfg.sasl.password)):
            # a secretRef is read by KEDA from that same Secret; a literal from the scaler Secret
            auth.append((param, value.name, value.key) if isinstance(value, SecretRef) else (param, own, param))
    if cfg.tls is not None:
        meta["tls"] = "enable"
        auth += [(k, own, k) for k, present in (("ca", cfg.tls.ca_file), ("cert", cfg.tls.cert_file),
                                                ("key", cfg.tls.key_file)) if present]
    return {"type": "kafka", "name": "upstream-lag", "metadata": meta}, auth


def _redis_trigger(p: Pipeline, v: Vertex, cfg: Any) -> tuple[dict[str, Any], AuthRefs]:
    s, own = v.scale, scaler_secret(p, v)
    meta = {"stream": cfg.stream, "consumerGroup": cfg.group, "lagCount": str(s.lag_threshold),
            "activationLagCount": str(s.activation_lag_threshold)}
    url = None if isinstance(cfg.url, SecretRef) else urlsplit(cfg.url)
    host_port = url.netloc.rpartition("@")[2] if url is not None else ""
    if not host_port or "${" in host_port:  # where Redis is, only the pods know: from the scaler Secret
        return {"type": "redis-streams", "name": "upstream-lag", "metadata": meta}, [
            ("address", own, "address"), ("password", own, "password")]
    meta.update({"address": f"{url.hostname}:{url.port or 6379}", "databaseIndex": (url.path.strip("/") or "0")})
    if url.scheme == "rediss":
        meta["enableTLS"] = "true"
    return {"type": "redis-streams", "name": "upstream-lag", "metadata": meta}, (
        [("password", own, "password")] if url.password else [])


def _rabbitmq_trigger(p: Pipeline, v: Vertex, cfg: Any) -> tuple[dict[str, Any], AuthRefs]:
    """The AMQP URL carries credentials, so KEDA always reads it from a Secret (parameter `host`)."""
    s = v.scale
    meta = {"protocol": "amqp", "queueName": cfg.queue, "mode": "QueueLength", "value": str(s.lag_threshold),
            "activationValue": str(s.activation_lag_threshold)}
    ref = cfg.url if isinstance(cfg.url, SecretRef) else SecretRef(name=scaler_secret(p, v), key="host")
    return {"type": "rabbitmq", "name": "upstream-lag", "metadata": meta}, [("host", ref.name, ref.key)]


def upstream_trigger(p: Pipeline, v: Vertex) -> tuple[dict[str, Any], AuthRefs]:
    """KEDA trigger reading the upstream backlog of a source, and the credential parameters it
    takes from Secrets (never inlined: the spec's passwords stay out of it)."""
    assert v.source is not None
    kind = v.source.kind
    make = {"kafka": _kafka_trigger, "redisStreams": _redis_trigger, "rabbitmq": _rabbitmq_trigger}[kind]
    return make(p, v, getattr(v.source, kind))


def render_source_scaling(p: Pipeline, v: Vertex, opts: RenderOptions) -> list[dict[str, Any]]:
    trigger, auth = upstream_trigger(p, v)
    objs = []
    if auth:
        trigger["authenticationRef"] = {"name": scaler_secret(p, v), "kind": "TriggerAuthentication"}
        objs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                     "metadata": _meta(p, scaler_secret(p, v), opts, v),
                     "spec": {"secretTargetRef": [{"parameter": param, "name": name, "key": key}
                                                  for param, name, key in auth]}})
    so = render_scaled_object(p, v, opts)
    so["spec"]["minReplicaCount"] = v.scale.min  # the upstream's own backlog wakes it from zero
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
    """Objects grouped by file: `pipeline.yaml` (Namespace, ConfigMap, provisioning Job, auth,
    side-input manager, metrics) and one file per vertex."""
    check_env_names(p)
    files: dict[str, list[dict[str, Any]]] = {"pipeline.yaml": [
        *([render_namespace(p, opts)] if opts.create_namespace else []),
        render_config_map(p, pipeline_text, opts), render_provision_job(p, pipeline_text, opts)]}
    if opts.monitoring_secret:
        files["pipeline.yaml"].append(render_trigger_auth(p, opts))
    if p.spec.side_inputs:
        files["pipeline.yaml"].append(render_side_input_manager(p, pipeline_text, opts))
    if opts.service_monitor:
        files["pipeline.yaml"] += [render_metrics_service(p, opts), render_service_monitor(p, opts)]
    for v in p.spec.vertices:
        files[f"{v.name}.yaml"] = render_vertex(p, v, pipeline_text, opts)
    return files


def keda_scaled(v: Vertex) -> bool:
    """A ScaledObject sets this vertex's replicas: every buffered vertex, and a source whose
    upstream backlog KEDA reads when it may run more than one replica."""
    return v.kind != "source" or (v.source.kind in UPSTREAM_SCALED and v.scale.max > 1)


def render_vertex(p: Pipeline, v: Vertex, pipeline_text: str, opts: RenderOptions) -> list[dict[str, Any]]:
    objs = [render_deployment(p, v, pipeline_text, opts)]
    if v.kind != "source":
        objs.append(render_scaled_object(p, v, opts))
    elif keda_scaled(v):
        objs.extend(render_source_scaling(p, v, opts))
    if v.source is not None and v.source.http is not None:
        objs.append(render_service(p, v, opts))
    if v.scale.max > 1:
        objs.append(render_pdb(p, v, opts))
    return objs


def all_secret_refs(p: Pipeline) -> list[tuple[str, SecretRef]]:
    return list(refs_in(p.spec.vertices, "spec.vertices"))


def check_env_names(p: Pipeline) -> None:
    """Two different secrets must not share one NATSFLOW_SECRET_* variable."""
    first: dict[str, tuple[str, SecretRef]] = {}
    problems = []
    for path, ref in all_secret_refs(p):
        seen = first.setdefault(env_name(ref), (path, ref))
        if seen[1] != ref:
            problems.append((path, f"secretRef {ref.name}/{ref.key} and {seen[1].name}/{seen[1].key} ({seen[0]}) "
                                   f"both become {env_name(ref)}; rename a key or a Secret"))
    if problems:
        raise RenderError(problems)


# ---- what `natsflow render` tells the person running it -----------------------------------------

_CREDENTIAL_NAME = re.compile(r"auth|token|secret|passw|cookie|credential|api[-_]?key|private[-_]?key", re.I)
_DSN_PASSWORD = re.compile(r"(^|\s)password\s*=", re.I)


def _literal(text: str) -> bool:
    return "${" not in text


def _holds_password(text: str) -> bool:
    """A URL or DSN with a password written into it (`scheme://user:pw@host`, `password=pw`)."""
    try:
        password = urlsplit(text).password
    except ValueError:
        password = None
    return bool(password and _literal(password)) or bool(_DSN_PASSWORD.search(text))


def inline_credentials(p: Pipeline) -> list[str]:
    """Field paths of credentials written into the file itself (so into the ConfigMap): tokens and
    passwords, URLs and DSNs with a password, credential-like HTTP headers and udf.env values."""
    found = []

    def walk(value: Any, path: str, key: str, parent: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}", str(k), key)
        elif isinstance(value, str) and _literal(value) and (
                key in ("token", "password")
                or (key in ("url", "dsn") and _holds_password(value))
                or (parent in ("headers", "env") and _CREDENTIAL_NAME.search(key))):
            found.append(path)

    for v in p.spec.vertices:
        walk(v.model_dump(mode="json", by_alias=True, exclude_none=True), vertex_path(p, v), "", "")
    return found


def report(p: Pipeline, file: str, opts: RenderOptions) -> list[str]:
    """Lines for stderr: warnings for inline credentials, then what the pods read from Secrets."""
    lines = [f"warning: {file}: {path}: a credential written into the file ends up in the ConfigMap; "
             "use {secretRef: {name, key}} or ${VAR}" for path in inline_credentials(p)]
    refs = sorted({(env_name(ref), ref.name, ref.key, path) for path, ref in all_secret_refs(p)})
    if refs:
        lines.append("secrets the pods read (valueFrom.secretKeyRef; natsflow run reads the same variables):")
        lines += [f"  {name}/{key} -> {env}  ({path})" for env, name, key, path in refs]
    if p.env_refs:
        lines.append(f"environment variables the pods substitute into the file (Secret {env_secret(p, opts)}, "
                     "envFrom, optional; render used the defaults):")
        lines += [f"  {r.name}  ({r.path}{'' if r.default is None else f', default {r.default!r}'})"
                  for r in p.env_refs]
    return lines


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the pipeline file in the ConfigMap) as readable `|` blocks."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def write_rendered(files: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, objs in files.items():
        path = out_dir / name
        # a JSON round trip unshares nested dicts, so the YAML has no &anchors
        path.write_text(yaml.dump_all(json.loads(json.dumps(objs)), Dumper=_Dumper, sort_keys=False))
        written.append(path)
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": sorted(files)}
    (out_dir / "kustomization.yaml").write_text(yaml.safe_dump(kustomization, sort_keys=False))
    written.append(out_dir / "kustomization.yaml")
    return written
