"""A Numaflow vertex's `source:` block as natsflow's: generator, http, kafka, nats, jetstream,
udsource (a `numaflow:` source program) and its `transformer`."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow import kafka
from framework.importers.numaflow.programs import program
from framework.importers.numaflow.report import Node
from framework.importers.numaflow.values import duration, secret_ref

_NATS_AUTH = "natsflow's nats and jetstream sources connect with the url's credentials (or the NATS_* settings)"
UNSUPPORTED = {"serving": "natsflow's serving source has its own request/response shape: see docs/serving.md",
               "pulsar": "natsflow has no pulsar source", "sqs": "natsflow has no sqs source"}


def source(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    """The natsflow `source:` block; a source kind natsflow lacks becomes a NATS subject stand-in."""
    block: dict[str, Any] = {}
    for kind, convert in _KINDS.items():
        child = node.child(kind)
        if child is not None:
            config = convert(child, pipeline, vertex)
            if config is not None:
                block[kind if kind != "udsource" else "numaflow"] = config
    for kind, why in UNSUPPORTED.items():
        node.drop(kind, f"{why}; the vertex reads NATS subject {stand_in(pipeline, vertex)} instead: publish there "
                        "or replace the source")
    transformer = node.child("transformer")
    if transformer is not None:
        converted = program(transformer)
        transformer.drop("retryStrategy", "natsflow dead-letters a record whose transformer call fails "
                                          "(docs/numaflow-udfs.md); there is no per-transformer retry strategy")
        transformer.rest()
        if converted is not None:
            block["transformer"] = {"numaflow": converted}
    node.rest()
    if not any(k for k in block if k != "transformer"):
        block = {"nats": {"subject": stand_in(pipeline, vertex)}, **block}
    return block


def stand_in(pipeline: str, vertex: str) -> str:
    """The NATS subject an unconvertible source (or sink) is replaced by."""
    return f"{pipeline}.{vertex}"


def _generator(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    out = node.take_present(("rpu", "msgSize", "keyCount", "value"), int)
    length = duration(node, "duration")
    if length is not None:
        out["duration"] = length
    node.drop("jitter", "the generator stamps event time at creation, without jitter")
    node.drop("valueBlob", "the generator writes JSON documents ({id, seq, createdTs, value}), not a fixed blob")
    node.rest()
    return out


def _http(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    auth = node.child("auth")
    if auth is not None:
        token = secret_ref(auth, "token")
        auth.rest()
        if token is not None:
            out["auth"] = {"token": token}
    node.note("service", "natsflow's http source takes POST /vertices/<vertex> as Numaflow's does, over plain HTTP "
                         "on port 8080 (source.http.port); render gives it a Service")
    node.rest()
    return out


def _kafka(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    out = kafka.connection(node)
    group = node.take("consumerGroup", str)
    if not group:
        group = f"{pipeline}-{vertex}"  # Numaflow's default group name
        node.report.note(node.at("consumerGroup"), f"not set: natsflow requires one; {group!r} is used")
    out["consumerGroup"] = group
    node.note("kafkaVersion", "aiokafka negotiates the protocol version with the brokers")
    node.rest()
    return out


def _nats(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    out: dict[str, Any] = {"url": node.take("url", str), "subject": node.take("subject", str)}
    queue = node.take("queue", str)
    if queue:
        out["queue"] = queue
    node.drop("tls", _NATS_AUTH)
    node.drop("auth", _NATS_AUTH)
    node.rest()
    return {k: v for k, v in out.items() if v is not None}


_DELIVER = {"all": "all", "new": "new", "last": "last"}


def _jetstream(node: Node, pipeline: str, vertex: str) -> dict[str, Any]:
    out: dict[str, Any] = {"url": node.take("url", str), "stream": node.take("stream", str),
                           "consumer": node.take("consumer", str)}
    policy = node.take("deliver_policy", str)
    if policy in _DELIVER:
        out["deliverPolicy"] = _DELIVER[policy]
    elif policy:
        node.report.drop(node.at("deliver_policy"), f"natsflow's jetstream source delivers all, new or last, not "
                                                    f"{policy!r}")
    node.drop("filter_subjects", "natsflow's jetstream source reads the whole stream")
    node.drop("tls", _NATS_AUTH)
    node.drop("auth", _NATS_AUTH)
    node.rest()
    return {k: v for k, v in out.items() if v}


def _udsource(node: Node, pipeline: str, vertex: str) -> dict[str, Any] | None:
    converted = program(node)
    node.rest()
    return converted


_KINDS = {"generator": _generator, "http": _http, "kafka": _kafka, "nats": _nats, "jetstream": _jetstream,
          "udsource": _udsource}
