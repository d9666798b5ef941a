"""Scaling objects: a KEDA ScaledObject per buffered vertex (one nats-jetstream trigger per
buffer partition), a source scaled on its upstream's backlog by its connector's trigger
(framework/k8s/keda.py), and a PodDisruptionBudget for vertices that may run several replicas."""

from __future__ import annotations

from typing import Any

from framework.isb import names
from framework.k8s.keda import KedaTrigger, UpstreamScaling
from framework.k8s.objects import RenderOptions, object_meta, object_name, selector
from framework.local.scaling import effective_cooldown
from framework.spec import Pipeline, Vertex, min_replicas
from framework.spec.plan import upstream_scaled
from framework.spec.secrets import vertex_path

PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"


def render_scaled_object(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    s = v.scale
    triggers = []
    for part in p.partitions(v.name):
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
    so_meta: dict[str, Any] = object_meta(p, object_name(p, v.name), opts, v)
    if paused(p):  # KEDA scales the Deployment to 0 and stops scaling it until the annotation goes
        so_meta["annotations"] = {PAUSED_REPLICAS: "0"}
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": so_meta,
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


def scaler_secret(p: Pipeline, v: Vertex) -> str:
    """The Secret a user creates with a source's upstream credentials for KEDA (docs: deploy/keda)."""
    return object_name(p, f"{v.name}-scaler")


def upstream_trigger(p: Pipeline, v: Vertex) -> KedaTrigger:
    """The KEDA trigger of a source's connector reading its upstream backlog, with the credential
    parameters it takes from Secrets (never inlined: the spec's passwords stay out of it)."""
    assert v.source is not None and v.source.connector.keda_trigger is not None
    where = f"{vertex_path(p, v)}.source.{v.source.kind}"
    return v.source.connector.keda_trigger(UpstreamScaling(v.source.config, v.scale, where, scaler_secret(p, v)))


def render_source_scaling(p: Pipeline, v: Vertex, opts: RenderOptions) -> list[dict[str, Any]]:
    upstream = upstream_trigger(p, v)
    trigger = upstream.manifest()
    objs = []
    if upstream.auth:
        trigger["authenticationRef"] = {"name": scaler_secret(p, v), "kind": "TriggerAuthentication"}
        objs.append({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                     "metadata": object_meta(p, scaler_secret(p, v), opts, v),
                     "spec": {"secretTargetRef": [{"parameter": a.parameter, "name": a.secret, "key": a.key}
                                                  for a in upstream.auth]}})
    so = render_scaled_object(p, v, opts)
    so["spec"]["minReplicaCount"] = v.scale.min  # the upstream's own backlog wakes it from zero
    so["spec"]["triggers"] = [trigger]
    return [so, *objs]


def render_trigger_auth(p: Pipeline, opts: RenderOptions) -> dict[str, Any]:
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": object_meta(p, object_name(p, "nats-monitoring"), opts),
        "spec": {"secretTargetRef": [
            {"parameter": "natsServerMonitoringEndpoint", "name": opts.monitoring_secret, "key": "endpoint"},
            {"parameter": "account", "name": opts.monitoring_secret, "key": "account"},
        ]},
    }


def render_pdb(p: Pipeline, v: Vertex, opts: RenderOptions) -> dict[str, Any]:
    """Voluntary disruptions (node drains) take one replica at a time. maxUnavailable, not
    minAvailable, so a vertex scaled to zero or one never blocks a drain."""
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": object_meta(p, object_name(p, v.name), opts, v),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(p, v)},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    }


def paused(p: Pipeline) -> bool:
    """`spec.lifecycle.desiredPhase: Paused`: every vertex is rendered at 0 replicas (re-rendering
    with Running brings back the spec's counts, and KEDA its own)."""
    return p.spec.lifecycle.desired_phase == "Paused"


def keda_scaled(v: Vertex) -> bool:
    """A ScaledObject sets this vertex's replicas: every buffered vertex, and a source whose
    upstream backlog KEDA reads when it may run more than one replica."""
    return v.kind != "source" or upstream_scaled(v)
