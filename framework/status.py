"""`natsflow status FILE`: a table per vertex read from JetStream — what an operator checks first."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from . import buffer as b
from .spec import Pipeline
from .watermark import HEARTBEAT_S, bucket_name

REPLICA_ALIVE_MS = int(3 * HEARTBEAT_S * 1000)


@dataclass
class VertexStatus:
    name: str
    kind: str
    pending: int | None = None
    ack_pending: int | None = None
    readers: int | None = None  # pull requests waiting on the consumer: ~ live replicas
    buffered: int | None = None
    capacity: int | None = None
    dead_letters: int | None = None
    watermark_ms: int | None = None
    # Totals since the buffer was created (stream sequences never go back): what the UI turns
    # into rates. A work-queue stream deletes acked messages, so processed = appended - stored.
    appended: int | None = None
    processed: int | None = None
    replicas: int | None = None  # replicas publishing watermark heartbeats (vertices with out-edges)


async def collect(js: JetStreamContext, p: Pipeline) -> list[VertexStatus]:
    writers = await _writers(js, p)
    out = []
    for v in p.spec.vertices:
        st = VertexStatus(v.name, v.kind, watermark_ms=writers.watermarks.get(v.name))
        if p.out_edges(v.name):
            st.replicas = len(writers.replicas.get(v.name, ()))
        if v.kind != "source":
            st.pending = st.ack_pending = st.readers = st.buffered = st.appended = 0
            st.capacity = p.limits_for(v.name).buffer_max_length * len(b.partitions(p, v.name))
            for part in b.partitions(p, v.name):
                try:
                    ci = await js.consumer_info(b.stream_name(p.name, v.name, part), b.consumer_name(p.name, v.name, part))
                    si = await js.stream_info(b.stream_name(p.name, v.name, part))
                except NotFoundError:
                    st.pending = None  # not provisioned
                    break
                st.pending += ci.num_pending
                st.ack_pending += ci.num_ack_pending
                st.readers += ci.num_waiting or 0
                st.buffered += si.state.messages
                st.appended += si.state.last_seq
            if st.pending is None:
                st.buffered = st.appended = None
            else:
                st.processed = st.appended - st.buffered
            try:
                st.dead_letters = (await js.stream_info(b.dlq_stream_name(p.name, v.name))).state.messages
            except NotFoundError:
                pass
        out.append(st)
    return out


@dataclass
class _Writers:
    watermarks: dict[str, int] = field(default_factory=dict)
    replicas: dict[str, set[str]] = field(default_factory=dict)


async def _writers(js: JetStreamContext, p: Pipeline) -> _Writers:
    """From the watermark bucket (keys `U.V.<partition>.<replica>`): per writing vertex, the
    minimum watermark its live replicas published, and which replicas beat recently."""
    found = _Writers()
    try:
        kv = await js.key_value(bucket_name(p.name))
        keys = await kv.keys()
    except Exception:  # noqa: BLE001 - no bucket or no keys yet
        return found
    now = int(time.time() * 1000)
    for key in keys:
        try:
            entry = await kv.get(key)
        except NotFoundError:  # deleted between keys() and get()
            continue
        parts = key.split(".", 3)
        if len(parts) != 4:
            continue  # not a writer's key
        src, replica = parts[0], parts[3]
        value = json.loads(entry.value)
        age_ms = now - value["ts"]
        # Heartbeats come every second; three missed ones mean the replica is gone.
        if age_ms <= REPLICA_ALIVE_MS:
            found.replicas.setdefault(src, set()).add(replica)
        if age_ms > p.spec.watermark.publisher_timeout * 1000 or value["wm"] < 0:
            continue
        found.watermarks[src] = min(found.watermarks.get(src, value["wm"]), value["wm"])
    return found


def render_table(rows: list[VertexStatus]) -> str:
    def n(x) -> str:
        return "-" if x is None else f"{x:,}"

    def wm(ms) -> str:
        return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))

    head = f"{'vertex':<16}{'kind':<8}{'pending':>10}{'ack-pend':>10}{'buffer':>16}{'pulls':>7}{'dlq':>7}  watermark (UTC)"
    lines = [head, "-" * len(head)]
    for r in rows:
        buf = "-" if r.buffered is None else f"{r.buffered:,}/{r.capacity:,}"
        lines.append(f"{r.name:<16}{r.kind:<8}{n(r.pending):>10}{n(r.ack_pending):>10}{buf:>16}"
                     f"{n(r.readers):>7}{n(r.dead_letters):>7}  {wm(r.watermark_ms)}")
    return "\n".join(lines)


async def show(js: JetStreamContext, p: Pipeline, watch: float | None = None) -> None:
    while True:
        table = render_table(await collect(js, p))
        if watch:
            print("\x1b[2J\x1b[H" + f"pipeline {p.name}   {time.strftime('%H:%M:%S')}\n" + table, flush=True)
            await asyncio.sleep(watch)
        else:
            print(table)
            return
