"""A Numaflow vertex's `udf:` block as natsflow's `udf: {numaflow: ...}`: the container as a
program, `groupBy` as its `reduce:` options (window, keyed, allowedLateness, partitions)."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow.programs import program
from framework.importers.numaflow.report import Node
from framework.importers.numaflow.values import duration
from framework.spec.udf import COMMAND_PLACEHOLDER

_STREAMING = ("natsflow serves whichever the program is, a Reducer or a ReduceStreamer (its SDK server says "
              "so); nothing to set")


def udf(node: Node, partitions: int | None) -> dict[str, Any]:
    """The natsflow `udf:` block; `partitions` is the vertex's (a reduce's partitions)."""
    out: dict[str, Any] = {}
    if node.has("builtin"):
        node.drop("builtin", "natsflow has no built-in functions: write the function as a Python map handler "
                             "or run it as a Numaflow SDK program")
        numaflow: dict[str, Any] | None = {"command": [COMMAND_PLACEHOLDER]}
        node.take("container")
    else:
        numaflow = program(node)
    if numaflow is None:
        node.rest()
        return out
    group_by = node.child("groupBy")
    if group_by is not None:
        reduce = _reduce(group_by)
        if partitions is not None:
            reduce["partitions"] = partitions
        numaflow["reduce"] = reduce
    out["numaflow"] = numaflow
    node.convert("retryStrategy", _retry, out, as_key="retry")
    node.rest()
    return out


def _reduce(node: Node) -> dict[str, Any]:
    window = node.child("window")
    reduce: dict[str, Any] = {"window": _window(window) if window is not None else {}}
    keyed = node.take("keyed", bool)
    reduce["keyed"] = bool(keyed)  # Numaflow's default is unkeyed, natsflow's keyed
    lateness = duration(node, "allowedLateness")
    if lateness is not None:
        reduce["allowedLateness"] = lateness
    node.note("storage", "natsflow keeps an open window's inputs unacknowledged in its JetStream buffer: no PBQ "
                         "volume")
    node.rest()
    if not reduce["window"]:
        node.report.error(node.at("window"), "a groupBy needs a window (fixed, sliding or session)")
    return reduce


def _window(node: Node) -> dict[str, Any]:
    fields = {"fixed": ("length",), "sliding": ("length", "slide"), "session": ("timeout",)}
    for kind, keys in fields.items():
        child = node.child(kind)
        if child is None:
            continue
        window = {key: duration(child, key) for key in keys}
        child.note("streaming", _STREAMING)
        child.rest()
        node.rest()
        missing = [k for k, v in window.items() if v is None]
        if missing:
            child.report.error(child.at(missing[0]), f"a {kind} window needs {missing[0]}")
        return {kind: window}
    node.drop("accumulator", "natsflow has no accumulator window (a reduce over an unbounded, ordered stream)")
    node.rest()
    return {}


def _retry(node: Node) -> dict[str, Any]:
    """A map UDF's retryStrategy as natsflow's udf.retry (after the last attempt: the dead letter)."""
    out: dict[str, Any] = {}
    backoff = node.child("backoff")
    if backoff is not None:
        steps = backoff.take("steps", int)
        if steps is not None:
            out["attempts"] = max(1, min(100, steps + 1))  # the first call and `steps` retries
        for key in ("interval", "cap"):
            value = duration(backoff, key)
            if value is not None:
                out[key] = value
        factor = backoff.take("factor", (int, float))
        if factor is not None:
            out["factor"] = factor
        backoff.drop("jitter", "natsflow's udf retries wait without jitter")
        backoff.rest()
    node.drop("onFailure", "after its last attempt natsflow sends the message to the vertex's dead-letter stream")
    node.rest()
    return out
