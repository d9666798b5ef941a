"""A Numaflow user-defined container (UDF, UD source, transformer, UD sink, side input) as a
natsflow `numaflow:` program block: the container for `natsflow render`, and a `command:`
placeholder (COMMAND_PLACEHOLDER) the user replaces with how the program starts locally."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow.report import Node
from framework.importers.numaflow.values import env_vars
from framework.spec.udf import COMMAND_PLACEHOLDER

_POD_ONLY = ("a Kubernetes container setting: natsflow render does not carry it over; add it to the "
             "rendered sidecar")


def program(owner: Node, key: str = "container") -> dict[str, Any] | None:
    """The `numaflow:` block for the container at `owner.key`, or None (an error) without an image."""
    node = owner.child(key)
    if node is None:
        owner.report.error(owner.at(key), "a user-defined container is required here")
        return None
    image = node.take("image", str)
    if not image:
        node.report.error(node.at("image"), "a user-defined container needs an image")
        return None
    container: dict[str, Any] = {"image": image}
    for field in ("command", "args"):
        value = node.take(field, list)
        if value:
            container[field] = [str(v) for v in value]
    env = env_vars(node, "env")
    node.note("imagePullPolicy", "the cluster's default pull policy applies to the rendered sidecar")
    for field in ("envFrom", "volumeMounts", "resources", "securityContext", "readinessProbe", "livenessProbe",
                  "ports"):
        node.drop(field, _POD_ONLY)
    node.rest()
    block: dict[str, Any] = {"command": [COMMAND_PLACEHOLDER], "container": container}
    if env:
        block["env"] = env
    return block
