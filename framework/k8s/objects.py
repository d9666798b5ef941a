"""What every object and pod `natsflow render` makes shares: names, labels, the options of a
render, and the pod template's pieces (security profile, volumes, environment, resources)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from framework.spec import Pipeline, Resources, SecretRef, Vertex, plan

PIPELINE_MOUNT = "/etc/natsflow"
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
    "numaflow-udf": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
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
    return int(max(30, plan(p, v.name).limits.ack_wait)) + GRACE_EXTRA_S


def checksum(pipeline_text: str) -> str:
    return hashlib.sha256(pipeline_text.encode()).hexdigest()


def object_meta(p: Pipeline, name: str, opts: RenderOptions, v: Vertex | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": opts.namespace, "labels": labels(p, v)}


# ---- what every container and pod gets ---------------------------------------------------------


def pipeline_volume(p: Pipeline) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = {"name": "pipeline", "configMap": {"name": object_name(p, "pipeline")}}
    mount = {"name": "pipeline", "mountPath": PIPELINE_MOUNT, "readOnly": True}
    return volume, mount


def env_from(p: Pipeline, opts: RenderOptions) -> list[dict[str, Any]]:
    """NATS settings, and the file's `${VAR}`s (optional: a file with none needs no such Secret)."""
    return [{"secretRef": {"name": opts.nats_secret}},
            {"secretRef": {"name": env_secret(p, opts), "optional": True}}]


def secret_env(name: str, ref: SecretRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def resources(container: str, override: Resources | None = None) -> dict[str, dict[str, str]]:
    out = {k: dict(v) for k, v in DEFAULT_RESOURCES[container].items()}
    if override is not None:
        out["requests"].update(override.requests)
        out["limits"].update(override.limits)
    return out


def pod_spec(containers: list[dict[str, Any]], volumes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
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


def pod_metadata(pod_labels: dict[str, str], pipeline_text: str, opts: RenderOptions, metrics: bool) -> dict[str, Any]:
    """Labels, and annotations: the pipeline file's checksum (a changed file is a changed pod
    template, so the Deployment rolls) and, where the pod serves /metrics, Prometheus's."""
    annotations = {CHECKSUM: checksum(pipeline_text)}
    if metrics and opts.scrape_annotations:
        annotations.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                            "prometheus.io/path": "/metrics"})
    return {"labels": {**pod_labels, METRICS_LABEL: "true"} if metrics else pod_labels, "annotations": annotations}
