"""The inputs the conformance kit crafts and the pipeline it builds around the vertex under test
(`feed -> vut -> {all, tagged, untagged}`; only `vut` runs, the kit plays every other vertex)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext

from framework.isb import envelope, names
from framework.spec import Pipeline
from framework.testing.rules import BAD_EVERY, BARE_EVERY, HDR_PROBE, VUT, Observation, origin_of

# Keys the kit writes, one set per input in turn; "k\u00e9" is sent ASCII-escaped (as natsflow writes
# it) and may come back escaped or as raw UTF-8 (docs/protocol.md §3).
KEY_SETS: list[list[str]] = [[], ["k1"], ["k1", "k\u00e9"]]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FIRST_EVENT_MS, EVENT_STEP_MS = 1_700_000_000_000, 10


def event_time_of(n: int) -> int:
    """The event time of input n (epoch ms): distinct, rising."""
    return FIRST_EVENT_MS + n * EVENT_STEP_MS


def conformance_pipeline(name: str, udf: dict[str, Any], tag: str, *, out_limits: dict | None = None,
                         read_batch: int = 50, ack_wait: float = 5.0) -> dict[str, Any]:
    """The pipeline around the vertex under test. Only `vut` runs; the kit plays every other vertex."""
    sink: dict[str, Any] = {"sink": {"blackhole": {}}}
    return {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"readBatchSize": read_batch, "ackWait": ack_wait},
            "vertices": [
                {"name": "feed", "source": {"nats": {"subject": f"conformance.{name}"}}},
                {"name": VUT, "udf": {**udf, "retry": {"attempts": 2, "interval": 0.01}}},
                {"name": "all", **sink, **({"limits": out_limits} if out_limits else {})},
                {"name": "tagged", **sink},
                {"name": "untagged", **sink},
            ],
            "edges": [
                {"from": "feed", "to": VUT},
                {"from": VUT, "to": "all"},
                {"from": VUT, "to": "tagged", "conditions": {"tags": {"operator": "or", "values": [tag]}}},
                {"from": VUT, "to": "untagged", "conditions": {"tags": {"operator": "not", "values": [tag]}}},
            ],
        },
    }


async def feed(js: JetStreamContext, p: Pipeline, obs: Observation, start: int, count: int) -> None:
    """Publish inputs `start .. start+count-1` into the vertex's buffer, as an upstream vertex would:
    varied keys, event times, payloads, a user header, now and then a bad message, and now and
    then one without Nf-Event-Time and Nf-Id (its outputs take the store time and msg id, §3)."""
    subject = names.edge_subject(p.name, VUT, "feed")
    for chunk in range(start, start + count, 200):
        metas: list[dict[str, Any]] = []
        sends = []
        for n in range(chunk, min(chunk + 200, start + count)):
            event_ms = event_time_of(n)
            headers = envelope.envelope_headers(f"feed:{n}", f"in-{n}", event_ms, KEY_SETS[n % 3],
                                                {HDR_PROBE: f"p{n}"})
            bad = n % BAD_EVERY == BAD_EVERY - 1
            if bad:
                headers[envelope.HDR_KEYS] = "not-json"
            bare = n % BARE_EVERY == BARE_EVERY - 1 and not bad
            if bare:
                del headers[envelope.HDR_EVENT_TIME], headers[envelope.HDR_ID]
            payload = [f"message {n}".encode(), json.dumps({"n": n, "text": "h\u00e9llo"}).encode(),
                       bytes([n % 256, 0, 255]), b""][n % 4]
            # A bare input's data id is its msg id; its event time, the store time, is read later.
            metas.append({"msg_id": f"feed:{n}", "id": f"feed:{n}" if bare else f"in-{n}",
                          "event_time": None if bare else str(event_ms), "probe": f"p{n}", "bad": bad, "bare": bare})
            sends.append(js.publish(subject, payload, headers=headers))
        acks = await asyncio.gather(*sends)
        for meta, ack in zip(metas, acks, strict=True):
            meta["seq"] = ack.seq
            obs.inputs[origin_of(str(meta.pop("msg_id")))] = meta


async def store_times(js: JetStreamContext, p: Pipeline, obs: Observation) -> None:
    """The event time a bare input's outputs must carry: when JetStream stored it, in ms."""
    for meta in obs.inputs.values():
        if meta["event_time"] is None:
            stored = (await js.get_msg(names.stream_name(p.name, VUT), meta["seq"])).time
            assert stored is not None, "a stored message has a time"
            meta["event_time"] = str((stored - EPOCH) // timedelta(milliseconds=1))
