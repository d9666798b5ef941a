"""`convert(doc)`: a Numaflow Pipeline resource (numaflow.numaproj.io/v1alpha1) as a natsflow
pipeline document, with the report of what did not convert."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framework.importers.numaflow.report import Node, Report
from framework.importers.numaflow.settings import edge, lifecycle, limits, side_input, watermark
from framework.importers.numaflow.vertices import vertex

API_VERSION = "numaflow.numaproj.io/v1alpha1"


@dataclass
class Conversion:
    pipeline: dict[str, Any] = field(default_factory=dict)
    report: Report = field(default_factory=Report)


def convert(doc: Any) -> Conversion:
    result = Conversion()
    report = result.report
    root = Node.of(doc, "", report)
    if root is None:
        report.error("", "the file must hold a Numaflow Pipeline resource (a mapping)")
        return result
    api_version, kind = root.take("apiVersion", str), root.take("kind", str)
    if api_version != API_VERSION or kind != "Pipeline":
        report.error("kind", f"expected apiVersion {API_VERSION} and kind Pipeline, got {api_version} {kind} "
                             "(MonoVertex, ISBService and ServingPipeline resources are not converted)")
        return result
    root.take("status")  # written by Numaflow's controller, not by the user
    meta = root.child("metadata")
    spec = root.child("spec")
    if meta is None or spec is None:
        report.error("spec" if meta is not None else "metadata", "a Pipeline needs metadata and spec")
        return result
    metadata = _metadata(meta)
    result.pipeline = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": metadata,
                       "spec": _spec(spec, str(metadata.get("name", "")))}
    root.rest()
    return result


def _metadata(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {"name": node.take("name", str)}
    namespace = node.take("namespace", str)
    if namespace:
        out["namespace"] = namespace
    labels = node.take("labels", dict)
    if labels:
        out["labels"] = {str(k): str(v) for k, v in labels.items()}
    for key in ("generateName", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp",
                "managedFields", "finalizers", "ownerReferences"):
        node.note(key, "Kubernetes object metadata; natsflow render writes its own")
    node.rest()
    if not out["name"]:
        node.report.error(node.at("name"), "a Pipeline needs a name")
    return out


def _spec(node: Node, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node.note("interStepBufferServiceName", "natsflow's buffers are JetStream streams on the NATS server it "
                                            "connects to (--nats-url / NATS_URL)")
    node.convert("limits", limits, out)
    node.convert("watermark", watermark, out)
    side_inputs = [side_input(n) for n in node.children("sideInputs")]
    if side_inputs:
        out["sideInputs"] = [s for s in side_inputs if s is not None]
    node.convert("lifecycle", lifecycle, out)
    vertices = [vertex(n, name) for n in node.children("vertices")]
    out["vertices"] = [v for v in vertices if v is not None]
    edges = [edge(n) for n in node.children("edges")]
    out["edges"] = [e for e in edges if e is not None]
    node.drop("templates", "pod templates of Numaflow's daemon, jobs and vertices: natsflow render writes its own "
                           "Deployments; add settings to them")
    node.drop("interStepBuffer", "natsflow stores messages uncompressed in JetStream (spec.buffers sets storage "
                                 "and retention)")
    node.drop("ordered", "natsflow has no per-key ordered processing setting")
    node.rest()
    return out
