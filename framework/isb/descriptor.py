"""The wire contract a vertex in any language follows (docs/protocol.md is its prose form)."""

from __future__ import annotations

from typing import Any

from framework.isb import envelope, names
from framework.spec import Pipeline
from framework.watermark.marks import UNKNOWN

PROTOCOL_VERSION = "1"


def _output(p: Pipeline, vertex: str, to: str, e: Any) -> dict[str, Any]:
    parts = p.partitions(to)
    out: dict[str, Any] = {
        "to": to,
        "subject": names.edge_subject(p.name, to, vertex),
        "stream": names.stream_name(p.name, to),
        "softLimit": p.limits_for(to).buffer_soft_limit,
        "onFull": e.on_full.value,
        "tags": e.conditions.tags.model_dump(mode="json") if e.conditions and e.conditions.tags else None,
    }
    if parts != [None]:
        # A partitioned reduce has no unpartitioned buffer: a writer that ignores `partitions`
        # must fail at once rather than publish where no stream listens.
        out["subject"] = out["stream"] = None
        out["partitions"] = [{"subject": names.edge_subject(p.name, to, vertex, i),
                              "stream": names.stream_name(p.name, to, i)}
                             for i in parts]
    return out


def vertex_descriptor(p: Pipeline, vertex: str) -> dict[str, Any]:
    """Everything a vertex process needs to find its buffers: passed as NATSFLOW_DESCRIPTOR JSON."""
    v = p.vertex(vertex)
    limits = p.limits_for(vertex)
    desc: dict[str, Any] = {
        "protocol": PROTOCOL_VERSION,
        "pipeline": p.name,
        "vertex": vertex,
        "kind": v.kind,
        "limits": {
            "readBatchSize": limits.read_batch_size,
            "readTimeoutMs": int(limits.read_timeout * 1000),
            "ackWaitMs": int(limits.ack_wait * 1000),
        },
        "outputs": [_output(p, vertex, e.to, e) for e in p.out_edges(vertex)],
        "headers": {"msgId": envelope.HDR_MSG_ID, "id": envelope.HDR_ID, "keys": envelope.HDR_KEYS,
                    "eventTime": envelope.HDR_EVENT_TIME,
                    "error": envelope.HDR_ERROR, "errorVertex": envelope.HDR_ERROR_VERTEX},
        "watermark": {
            "bucket": names.watermark_bucket(p.name),
            "maxDelayMs": int(p.spec.watermark.max_delay * 1000),
            "publisherTimeoutMs": int(p.spec.watermark.publisher_timeout * 1000),
            "unknown": UNKNOWN,  # what to publish before the watermark is known
        },
    }
    if v.udf is not None:
        r = v.udf.retry
        # `attempts` counts every call, the first included: attempts 3 = one call and two retries.
        desc["retry"] = {"attempts": r.attempts, "intervalMs": int(r.interval * 1000), "factor": r.factor,
                         "capMs": int(r.cap * 1000)}
        desc["timeoutMs"] = int(v.udf.timeout * 1000)
    if v.kind != "source":
        desc["input"] = {
            "stream": names.stream_name(p.name, vertex),
            "consumer": names.consumer_name(p.name, vertex),
            "deadLetterSubject": names.dlq_subject(p.name, vertex),
        }
    return desc
