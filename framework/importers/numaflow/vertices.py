"""One Numaflow vertex as a natsflow vertex: its source, udf or sink block and its settings."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow.report import Node
from framework.importers.numaflow.settings import limits, scale
from framework.importers.numaflow.sinks import sink
from framework.importers.numaflow.sources import source
from framework.importers.numaflow.udf import udf

_POD = "a Kubernetes pod setting: natsflow render does not carry it over; add it to the rendered Deployment"
# AbstractPodTemplate's fields (inline in a Numaflow vertex), and the vertex's other pod-level settings.
POD_FIELDS = ("metadata", "nodeSelector", "tolerations", "securityContext", "imagePullSecrets", "priorityClassName",
              "priority", "affinity", "serviceAccountName", "runtimeClassName", "automountServiceAccountToken",
              "dnsPolicy", "dnsConfig", "resourceClaims", "volumes", "initContainers", "sidecars",
              "initContainerTemplate", "sideInputsContainerTemplate")


def vertex(node: Node, pipeline: str) -> dict[str, Any] | None:
    name = node.take("name", str)
    if not name:
        node.report.error(node.at("name"), "a vertex needs a name")
        return None
    out: dict[str, Any] = {"name": name}
    partitions = node.take("partitions", int)
    kinds = [k for k in ("source", "udf", "sink") if node.has(k)]
    if len(kinds) != 1:
        node.report.error(node.path, f"a vertex is exactly one of source, udf or sink (found {len(kinds)})")
        return None
    kind = kinds[0]
    block = node.child(kind)
    assert block is not None
    if kind == "source":
        out["source"] = source(block, pipeline, name)
    elif kind == "sink":
        out["sink"] = sink(block, pipeline, name)
    else:
        out["udf"] = udf(block, partitions if block.has("groupBy") else None)
    if partitions is not None and not (kind == "udf" and block.has("groupBy")) and partitions > 1:
        node.report.note(node.at("partitions"), "only a reduce has partitions in natsflow; the replicas of any "
                                                "other vertex share its one buffer stream")
    node.convert("scale", scale, out)
    node.convert("limits", limits, out)
    side_inputs = node.take("sideInputs", list)
    if side_inputs:
        out["sideInputs"] = [str(s) for s in side_inputs]
    template = node.child("containerTemplate")
    if template is not None:
        resources = _resources(template)
        if resources:
            out["resources"] = resources
    for key in POD_FIELDS:
        node.drop(key, _POD)
    node.note("updateStrategy", "natsflow render writes Deployments with Kubernetes' rolling update")
    node.drop("ordered", "natsflow has no per-key ordered processing setting")
    node.rest()
    return out


def _resources(node: Node) -> dict[str, Any]:
    """containerTemplate.resources as the vertex's resources; the rest of it is a pod setting."""
    resources = node.child("resources")
    out: dict[str, Any] = {}
    if resources is not None:
        for key in ("requests", "limits"):
            value = resources.take(key, dict)
            if value:
                out[key] = {str(k): str(v) for k, v in value.items()}
        resources.rest()
    node.drop("env", "natsflow passes environment only to UDF programs (udf.numaflow.env), not to the vertex "
                     "process")
    node.rest(_POD)
    return out
