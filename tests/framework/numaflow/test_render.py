"""`natsflow render` of Numaflow programs: each a sidecar of its vertex pod sharing one emptyDir
(the SDK's /var/run/numaflow in the sidecar), validated as Kubernetes data like tests/framework/test_render.py."""

from __future__ import annotations

import os

from framework.k8s.numaflow import SDK_FOLDER, SOCKETS_VOLUME, VERTEX_FOLDER
from framework.numaflow.launch import SIDECARS_ENV, launch_for, program_key
from framework.spec import parse_pipeline
from tests.framework.test_render import objects, pod_specs, render_doc, validate

UDF = {"image": "example.com/even-odd:1.0", "args": ["python", "main.py"]}
DOC = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "nf"},
    "spec": {
        "vertices": [
            {"name": "in", "source": {"generator": {"rpu": 5}, "transformer": {"numaflow": {
                "container": {"image": "example.com/stamp:1"}}}}},
            {"name": "eo", "udf": {"numaflow": {"container": UDF, "env": {"MODE": "fast"}}}},
            {"name": "out", "sink": {"numaflow": {"container": {"image": "example.com/sink:1"}},
                                     "fallback": {"numaflow": {"container": {"image": "example.com/fb:1"}}}}},
        ],
        "edges": [{"from": "in", "to": "eo"}, {"from": "eo", "to": "out"}],
    },
}


def deployment(files: dict, vertex: str) -> dict:
    return next(o for o in objects(files) if o["kind"] == "Deployment" and o["metadata"]["name"].endswith(vertex))


def test_numaflow_programs_render_as_sidecars_sharing_the_socket_folder():
    files = render_doc(DOC)
    for obj in objects(files):
        validate(obj)
    eo = deployment(files, "-eo")["spec"]["template"]["spec"]
    vertex, udf = eo["containers"][0], eo["containers"][1]
    assert [c["name"] for c in eo["containers"]] == ["vertex", "udf"]
    assert udf["image"] == UDF["image"] and udf["args"] == UDF["args"] and "command" not in udf
    key = program_key(parse_pipeline(DOC, file="p.yaml", check_handlers=False).vertex("eo").udf.numaflow)
    assert {"name": SOCKETS_VOLUME, "mountPath": SDK_FOLDER, "subPath": key} in udf["volumeMounts"]
    assert {"name": SOCKETS_VOLUME, "mountPath": VERTEX_FOLDER} in vertex["volumeMounts"]
    assert {"name": SIDECARS_ENV, "value": VERTEX_FOLDER} in vertex["env"]
    assert {"name": "MODE", "value": "fast"} in udf["env"]
    assert {"name": SOCKETS_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}} in eo["volumes"]
    out = deployment(files, "-out")["spec"]["template"]["spec"]
    assert [c["name"] for c in out["containers"]] == ["vertex", "udsink", "fb-udsink"]
    assert {"name": "NUMAFLOW_UD_CONTAINER_TYPE", "value": "fb-udsink"} in out["containers"][2]["env"]
    source = deployment(files, "-in")["spec"]["template"]["spec"]
    assert [c["name"] for c in source["containers"]] == ["vertex", "transformer"]
    for _, template in pod_specs(files):  # the restricted profile holds for the sidecars too
        for c in template["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_worker_finds_the_sidecar_folder_the_renderer_mounted(monkeypatch):
    p = parse_pipeline(DOC, file="p.yaml", check_handlers=False)
    monkeypatch.setitem(os.environ, SIDECARS_ENV, VERTEX_FOLDER)
    launch = launch_for(p, "eo", p.vertex("eo").udf.numaflow, "udf.numaflow", None)
    assert str(launch.sidecar_folder) == f"{VERTEX_FOLDER}/{program_key(p.vertex('eo').udf.numaflow)}"
