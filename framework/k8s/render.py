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
from typing import Any

from framework.isb.descriptor import vertex_descriptor
from framework.k8s.keda import RenderError
from framework.k8s.numaflow import numaflow_pod_parts, side_input_pod_parts, vertex_wiring
from framework.k8s.objects import (
    GRACE_EXTRA_S,
    METRICS_LABEL,
    METRICS_PORT,
    PIPELINE_MOUNT,
    PROVISION_TTL_S,
    RenderOptions,
    env_from,
    env_secret,
    grace_seconds,
    labels,
    object_meta,
    object_name,
    pipeline_volume,
    pod_metadata,
    pod_spec,
    resources,
    secret_env,
    selector,
)
from framework.k8s.output import check_env_names, inline_credentials, report, write_rendered
from framework.k8s.scaling import (
    keda_scaled,
    paused,
    render_pdb,
    render_scaled_object,
    render_source_scaling,
    render_trigger_auth,
)
from framework.spec import Pipeline, SecretRef, Vertex, min_replicas
from framework.spec.plan import MANAGER_SUFFIX
from framework.spec.secrets import env_name, vertex_refs
from framework.watermark.proxy import needs_proxy

__all__ = ["MANAGER_SUFFIX", "RenderError", "RenderOptions", "inline_credentials", "keda_scaled", "object_name",
           "render_pipeline", "render_vertex", "report", "write_rendered"]


def render_namespace(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    """The pods meet the restricted profile, so the namespace enforces it."""
    pss = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": opts.namespace, "labels": {"app.kubernetes.io/managed-by": "natsflow", **pss}}}


def render_config_map(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    meta = object_meta(p, object_name(p, "pipeline"), opts)
    names = sorted({r.name for r in p.env_refs})
    if names:  # what the pods read from the env Secret, for whoever creates it
        meta["annotations"] = {"natsflow.io/env-vars": ",".join(names), "natsflow.io/env-secret": env_secret(p, opts)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"pipeline.yaml": pipeline_text}}


def provision_job_name(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> str:
    """A Job's pod template cannot change: a new pipeline or image is a new Job, re-appliable."""
    digest = hashlib.sha256(f"{pipeline_text}\0{opts.image}".encode()).hexdigest()[:8]
    return f"{object_name(p, 'provision')[:54].rstrip('-')}-{digest}"


def render_provision_job(p: Pipeline, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = pipeline_volume(p)
    container = {
        "name": "provision", "image": opts.image,
        "command": ["natsflow", "provision", f"{PIPELINE_MOUNT}/pipeline.yaml"],
        "envFrom": env_from(p, opts),
        "resources": resources("provision"),
        "volumeMounts": [mount],
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": object_meta(p, provision_job_name(p, pipeline_text, opts), opts),
        "spec": {
            "backoffLimit": 6,
            "ttlSecondsAfterFinished": PROVISION_TTL_S,
            "template": {
                "metadata": pod_metadata(labels(p), pipeline_text, opts, metrics=False),
                "spec": pod_spec([container], [volume], restartPolicy="OnFailure"),
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
            env.append(secret_env(env_name(ref), ref))
    for k, val in sorted(v.udf.env.items() if v.udf is not None else []):
        env.append(secret_env(k, val) if isinstance(val, SecretRef) else {"name": k, "value": val})
    return env


def served_port(v: Vertex) -> int | None:
    """The port a source serves on (its connector's `port`, e.g. the http source), or None."""
    if v.source is None or v.source.connector.port is None:
        return None
    return v.source.connector.port(v.source.config)


def render_deployment(p: Pipeline, v: Vertex, pipeline_text: str, opts: RenderOptions) -> dict[str, Any]:
    volume, mount = pipeline_volume(p)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    port = served_port(v)
    if port is not None:
        ports.append({"name": "http", "containerPort": port})
    probe = {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": "vertex", "image": opts.image,
        "args": ["--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml", "--vertex", v.name],
        "env": _vertex_env(p, v),
        "envFrom": env_from(p, opts),
        "ports": ports,
        "resources": resources("vertex", v.resources),
        "livenessProbe": probe,
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [mount],
    }
    if v.udf is not None and v.udf.is_program:
        _as_program(container, p, v)
    sidecars, sidecar_volumes = numaflow_pod_parts(p, v, opts.image)
    if sidecars:
        vertex_wiring(container)
    # KEDA owns the replica count of a scaled vertex: a `replicas` in the manifest would reset it
    # on every re-apply (Kubernetes' advice for HPA targets), so only unscaled ones state it.
    # Paused (spec.lifecycle): 0 here, and KEDA's paused-replicas annotation on a scaled vertex.
    replicas = {} if keda_scaled(v) else {"replicas": 0 if paused(p) else min_replicas(v)}
    serves_metrics = not (v.udf is not None and v.udf.is_program)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": object_meta(p, object_name(p, v.name), opts, v),
        "spec": {
            **replicas,
            "selector": {"matchLabels": selector(p, v)},
            # A reduce too: partition leases keep two pods from reading one partition.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": pod_metadata(labels(p, v), pipeline_text, opts, metrics=serves_metrics),
                "spec": pod_spec([container, *sidecars, *_watermark_sidecar(p, v, opts, mount)],
                                 [volume, *sidecar_volumes],
                                  terminationGracePeriodSeconds=grace_seconds(p, v)),
            },
        },
    }


def _watermark_sidecar(p: Pipeline, v: Vertex, opts: RenderOptions, mount: dict[str, Any]) -> list[dict[str, Any]]:
    """A program vertex publishes no watermarks itself: a small natsflow container beside it does,
    from its ack floor (framework/watermark/proxy.py), so reduces downstream close windows."""
    if not needs_proxy(p, v.name):
        return []
    return [{"name": "watermark-proxy", "image": opts.image,
             "command": ["natsflow", "watermark-proxy", "--pipeline", f"{PIPELINE_MOUNT}/pipeline.yaml",
                         "--vertex", v.name],
             "envFrom": env_from(p, opts),
             "resources": resources("watermark-proxy"),
             "volumeMounts": [mount]}]


def _as_program(container: dict[str, Any], p: Pipeline, v: Vertex) -> None:
    """A vertex in another language: `udf.container` (its own image) or else `udf.command` in the
    pipeline image; its wiring comes in NATSFLOW_DESCRIPTOR. A foreign program need not serve the
    worker's health endpoints (the protocol makes them optional), so its own image gets no probes."""
    assert v.udf is not None
    container.pop("args")
    descriptor = json.dumps(vertex_descriptor(p, v.name))
    container["env"] = [*container["env"], {"name": "NATSFLOW_DESCRIPTOR", "value": descriptor}]
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
    volume, mount = pipeline_volume(p)
    name = object_name(p, MANAGER_SUFFIX)
    # Its own role label: vertex pods never carry it, so no vertex (even one named "sideinputs")
    # matches this selector.
    pod_labels = {**labels(p), "app.kubernetes.io/component": "sideinputs", "natsflow.io/role": "sideinputs"}
    container = {
        "name": "sideinputs", "image": opts.image,
        "command": ["natsflow", "sideinputs", f"{PIPELINE_MOUNT}/pipeline.yaml"],
        "env": [{"name": "NATSFLOW_METRICS_PORT", "value": str(METRICS_PORT)}],
        "envFrom": env_from(p, opts),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": resources("sideinputs"),
        "livenessProbe": {"httpGet": {"path": "/livez", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5},
        "volumeMounts": [mount],
    }
    sidecars, sidecar_volumes = side_input_pod_parts(p, opts.image)  # Numaflow SideInput retrievers
    if sidecars:
        vertex_wiring(container)
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {**object_meta(p, name, opts), "labels": pod_labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"natsflow.io/pipeline": p.name, "natsflow.io/role": "sideinputs"}},
            "strategy": {"type": "Recreate"},
            "template": {"metadata": pod_metadata(pod_labels, pipeline_text, opts, metrics=True),
                         "spec": pod_spec([container, *sidecars], [volume, *sidecar_volumes])},
        },
    }


def render_metrics_service(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    """A headless Service over every pod of the pipeline that serves /metrics, for the ServiceMonitor."""
    meta = object_meta(p, object_name(p, "metrics"), opts)
    meta["labels"] = {**meta["labels"], METRICS_LABEL: "true"}
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": meta,
        "spec": {"clusterIP": "None", "selector": {"natsflow.io/pipeline": p.name, METRICS_LABEL: "true"},
                 "ports": [{"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"}]},
    }


def render_service_monitor(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
        "metadata": object_meta(p, object_name(p, "metrics"), opts),
        "spec": {"selector": {"matchLabels": {"natsflow.io/pipeline": p.name, METRICS_LABEL: "true"}},
                 "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "30s"}],
                 "podTargetLabels": ["natsflow.io/vertex"]},
    }


def render_service(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": object_meta(p, object_name(p, v.name), opts, v),
        "spec": {
            "selector": {"natsflow.io/pipeline": p.name, "natsflow.io/vertex": v.name},
            "ports": [{"name": "http", "port": served_port(v), "targetPort": "http"}],
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


def render_vertex(p: Pipeline, v: Vertex, pipeline_text: str, opts: RenderOptions) -> list[dict[str, Any]]:
    objs = [render_deployment(p, v, pipeline_text, opts)]
    if v.kind != "source":
        objs.append(render_scaled_object(p, v, opts))
    elif keda_scaled(v):
        objs.extend(render_source_scaling(p, v, opts))
    if served_port(v) is not None:
        objs.append(render_service(p, v, opts))
    if v.scale.max > 1:
        objs.append(render_pdb(p, v, opts))
    return objs
