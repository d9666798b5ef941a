"""A Numaflow vertex's `sink:` block as natsflow's: log, blackhole, kafka and udsink (a
`numaflow:` sink program), with its fallback, onSuccess (inside the `numaflow:` block, where
natsflow keeps it) and retryStrategy."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow import kafka
from framework.importers.numaflow.programs import program
from framework.importers.numaflow.report import Node
from framework.importers.numaflow.sources import stand_in
from framework.importers.numaflow.values import duration

UNSUPPORTED = {"serve": "natsflow answers serving requests with its `serve` sink, paired with a serving source "
                        "(docs/serving.md)",
               "pulsar": "natsflow has no pulsar sink", "sqs": "natsflow has no sqs sink"}


def sink(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    """The natsflow `sink:` block, fallback and onSuccess included."""
    block = _abstract_sink(node, pipeline, vertex)
    fallback = node.child("fallback")
    if fallback is not None:
        block["fallback"] = _abstract_sink(fallback, pipeline, f"{vertex}-fallback")
        fallback.rest()
    on_success = node.child("onSuccess")
    if on_success is not None and "numaflow" in block:
        # Only a user-defined sink answers ON_SUCCESS: natsflow keeps the onSuccess sink in its block.
        block["numaflow"]["onSuccess"] = _abstract_sink(on_success, pipeline, f"{vertex}-onsuccess")
        on_success.rest()
    elif on_success is not None:
        node.report.drop(node.at("onSuccess"), "only a user-defined sink's ON_SUCCESS responses go to onSuccess; "
                                               "natsflow's built-in sinks send none")
    node.convert("retryStrategy", _retry_strategy, block)
    node.rest()
    return block


def _abstract_sink(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    """One sink kind of a sink, fallback or onSuccess block."""
    block: dict[str, Any] = {}
    for kind in ("log", "blackhole"):
        child = node.child(kind)
        if child is not None:
            child.rest()
            block[kind] = {}
    child = node.child("kafka")
    if child is not None:
        config = kafka.connection(child)
        if child.take("setKey", bool):
            config["setKey"] = True
        child.rest()
        block["kafka"] = config
    child = node.child("udsink")
    if child is not None:
        converted = program(child)
        child.rest()
        if converted is not None:
            block["numaflow"] = converted
    for kind, why in UNSUPPORTED.items():
        node.drop(kind, f"{why}; the vertex publishes to NATS subject {stand_in(pipeline, vertex)} instead")
    if not block:
        block["nats"] = {"subject": stand_in(pipeline, vertex)}
    return block


def _retry_strategy(node: Node) -> dict[str, Any]:
    """Numaflow's sink retryStrategy has natsflow's shape: backoff (interval, steps, factor, cap,
    jitter) and onFailure (retry, fallback, drop)."""
    out: dict[str, Any] = {}
    backoff = node.child("backoff")
    if backoff is not None:
        converted: dict[str, Any] = {}
        for key in ("interval", "cap"):
            value = duration(backoff, key)
            if value is not None:
                converted[key] = value
        for key, kind in (("steps", int), ("factor", (int, float)), ("jitter", (int, float))):
            value = backoff.take(key, kind)
            if value is not None:
                converted[key] = value
        backoff.rest()
        if converted:
            out["backoff"] = converted
    on_failure = node.take("onFailure", str)
    if on_failure in ("retry", "fallback", "drop"):
        out["onFailure"] = on_failure
    elif on_failure:
        node.report.error(node.at("onFailure"), f"{on_failure!r} is not retry, fallback or drop")
    node.rest()
    return out
