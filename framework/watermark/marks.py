"""Watermarks: how far event time has progressed, published per writer into a JetStream KV bucket.

A writer (one replica of vertex U) that writes to buffer B of vertex V puts, under the key
`U.V.<partition>.<replica>` of bucket `nf_<pipeline>_wm`, the value
`{"wm": <epoch ms>, "seq": <stream seq of its last write to B>, "ts": <wall clock ms>}`.
It promises: every message it writes to B after sequence `seq` has event time >= `wm` (late
data excepted). A reader of B that has processed B in order up to sequence s may therefore use,
for each live writer, the highest `wm` it published with `seq <= s`; its watermark is the
minimum of those over live writers, and never goes back. Algorithm and limits: docs/watermarks.md.

This module: the names and constants both sides share; publisher.py writes, fetcher.py reads.
"""

from __future__ import annotations

import os
import socket

from nats.js import JetStreamContext

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.spec import DEFAULT_BUFFERS, ResolvedBuffers

UNKNOWN = -1  # no watermark yet: nothing may close
PUBLISH_EVERY_S = 0.1
HEARTBEAT_S = 1.0
PUBLISHER_TIMEOUT_S = 10.0


def bucket_name(pipeline: str) -> str:
    """The watermark bucket of `pipeline` (named in isb/names.py)."""
    return names.watermark_bucket(pipeline)


def replica_id() -> str:
    """This replica's name: NATSFLOW_REPLICA_ID, else host and pid."""
    return os.environ.get("NATSFLOW_REPLICA_ID") or f"{socket.gethostname()}-{os.getpid()}".replace(".", "-")


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    """Create the watermark bucket with `buffers`' replicas/storage if missing (`update`: also
    reconcile an existing one, what `provision` does)."""
    return await ensure_kv_bucket(js, bucket_name(pipeline), f"natsflow watermarks of pipeline {pipeline}",
                                  buffers, update)
