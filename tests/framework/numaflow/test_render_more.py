"""`natsflow render` of a Numaflow reducer, user-defined source and SideInput retriever: sidecars
sharing the socket folder (the vertex pod's, or the side-input manager's), and the side-input
files of a vertex's Numaflow UDF at /var/numaflow/side-inputs."""

from __future__ import annotations

from framework.k8s.numaflow import SDK_SIDE_INPUTS, SOCKETS_VOLUME, VERTEX_FOLDER
from framework.k8s.render import MANAGER_SUFFIX
from framework.numaflow.launch import SIDECARS_ENV, program_key
from framework.spec import parse_pipeline
from tests.framework.numaflow.test_render import deployment
from tests.framework.test_render import objects, render_doc, validate

RETRIEVER = {"container": {"image": "example.com/thresholds:1"}}
DOC = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "nfm"},
    "spec": {
        "sideInputs": [{"name": "limits", "numaflow": RETRIEVER, "trigger": {"schedule": "@every 10s"}}],
        "vertices": [
            {"name": "in", "source": {"numaflow": {"container": {"image": "example.com/counter:1"}}}},
            {"name": "sums", "udf": {"numaflow": {"container": {"image": "example.com/sum:1"},
                                                  "reduce": {"window": {"fixed": {"length": "60s"}}}}},
             "sideInputs": ["limits"]},
            {"name": "out", "sink": {"log": {}}},
        ],
        "edges": [{"from": "in", "to": "sums"}, {"from": "sums", "to": "out"}],
    },
}


def test_reducer_source_and_side_input_programs_render_as_sidecars():
    files = render_doc(DOC)
    for obj in objects(files):
        validate(obj)
    p = parse_pipeline(DOC, file="p.yaml", check_handlers=False)
    source = deployment(files, "-in")["spec"]["template"]["spec"]
    assert [c["name"] for c in source["containers"]] == ["vertex", "udsource"]
    assert source["containers"][1]["image"] == "example.com/counter:1"
    assert {"name": SIDECARS_ENV, "value": VERTEX_FOLDER} in source["containers"][0]["env"]

    sums = deployment(files, "-sums")
    assert sums["kind"] == "Deployment"
    pod = sums["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["vertex", "udf"]
    key = program_key(p.vertex("sums").udf.numaflow)
    # the vertex lists a side input: its values are files where the SDK reads them
    assert {"name": SOCKETS_VOLUME, "mountPath": SDK_SIDE_INPUTS, "subPath": f"{key}/side-inputs"} in \
        pod["containers"][1]["volumeMounts"]
    assert not any(m["mountPath"] == SDK_SIDE_INPUTS for m in source["containers"][1]["volumeMounts"])

    manager = deployment(files, MANAGER_SUFFIX)["spec"]["template"]["spec"]
    assert [c["name"] for c in manager["containers"]] == ["sideinputs", "si-limits"]
    assert manager["containers"][1]["image"] == "example.com/thresholds:1"
    assert {"name": "NUMAFLOW_VERTEX_NAME", "value": "limits"} in manager["containers"][1]["env"]
    assert {"name": SIDECARS_ENV, "value": VERTEX_FOLDER} in manager["containers"][0]["env"]
    assert {"name": SOCKETS_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}} in manager["volumes"]
