"""`natsflow status FILE`: a table per vertex read from JetStream — what an operator checks first."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field

from nats import errors as nats_errors
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from framework.isb import names
from framework.runtime.ownership import holdings
from framework.spec import Pipeline
from framework.watermark.marks import HEARTBEAT_S, bucket_name

REPLICA_ALIVE_MS = int(3 * HEARTBEAT_S * 1000)


@dataclass
class BufferPlacement:
    """Where one buffer stream lives, from its stream info: how many replicas it has, which
    server leads it (None on a server that is not clustered) and which replicas are not current
    (offline, or behind the leader), e.g. after the loss of a node."""

    stream: str
    replicas: int
    leader: str | None = None
    not_current: list[str] = field(default_factory=list)  # e.g. "n3 (offline)", "n2 (lag 120)"

    @classmethod
    def of(cls, info: api.StreamInfo) -> BufferPlacement:
        cluster, name, replicas = info.cluster, info.config.name or "", info.config.num_replicas or 1
        if cluster is None or cluster.name is None:
            return cls(name, replicas)
        return cls(name, replicas, cluster.leader,
                   [f"{p.name} ({_peer_state(p)})" for p in cluster.replicas or [] if p.offline or not p.current])


def _peer_state(peer: api.PeerInfo) -> str:
    """What the leader says of a replica that is not current. A killed node shows as not current
    with the messages it lacks (nats-server 2.15 sets `offline` only for a peer known to be gone)."""
    if peer.offline:
        return "offline"
    return f"lag {peer.lag}" if peer.lag else "catching up"


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
    buffers: list[BufferPlacement] = field(default_factory=list)  # one per partition stream
    # A reduce: inputs its live replicas hold unacked in open windows, how many windows, and
    # which replica reads which partitions (from their heartbeats in the leases bucket).
    held: int | None = None
    open_windows: int | None = None
    partition_owners: dict[str, list[int]] | None = None
    fused: list[str] | None = None  # a fused chain's vertices, first to last (this row is its process)

    @property
    def shown_name(self) -> str:
        """The name in the table: a fused chain's vertices joined by '+'."""
        return "+".join(self.fused) if self.fused else self.name


async def collect(js: JetStreamContext, p: Pipeline) -> list[VertexStatus]:
    writers = await _writers(js, p)
    held = await holdings(js, p)
    out = []
    running = set(p.process_names())
    for v in p.spec.vertices:
        if v.name not in running:  # fused behind another vertex: shown in its chain's row
            continue
        chain = p.chain_of(v.name)
        # A chain publishes its watermark as its last vertex (framework/runtime/fused.py).
        writer = chain[-1] if chain is not None and p.out_edges(chain[-1]) else v.name
        st = VertexStatus(v.name, v.kind, watermark_ms=writers.watermarks.get(writer), fused=chain)
        if v.name in held:
            st.held, st.open_windows, st.partition_owners = held[v.name].held, held[v.name].windows, held[v.name].owners
        if p.out_edges(writer):
            st.replicas = len(writers.replicas.get(writer, ()))
        if v.kind != "source":
            st.pending = st.ack_pending = st.readers = st.buffered = st.appended = 0
            st.capacity = p.limits_for(v.name).buffer_max_length * len(p.partitions(v.name))
            for part in p.partitions(v.name):
                try:
                    ci = await js.consumer_info(names.stream_name(p.name, v.name, part),
                                                 names.consumer_name(p.name, v.name, part))
                    si = await js.stream_info(names.stream_name(p.name, v.name, part))
                except NotFoundError:
                    st.pending = None  # not provisioned
                    break
                st.pending += ci.num_pending
                st.ack_pending += ci.num_ack_pending
                st.readers += ci.num_waiting or 0
                st.buffered += si.state.messages
                st.appended += si.state.last_seq
                st.buffers.append(BufferPlacement.of(si))
            if st.pending is None:
                st.buffered = st.appended = None
            else:
                st.processed = st.appended - st.buffered
        for name in chain or [v.name]:  # every vertex has one; a source's holds the records it could not store
            try:
                letters = (await js.stream_info(names.dlq_stream_name(p.name, name))).state.messages
            except NotFoundError:
                continue
            st.dead_letters = (st.dead_letters or 0) + letters
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
    except Exception:
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
        if entry.value is None:
            continue  # a deleted key
        value = json.loads(entry.value)
        age_ms = now - value["ts"]
        # Heartbeats come every second; three missed ones mean the replica is gone.
        if age_ms <= REPLICA_ALIVE_MS:
            found.replicas.setdefault(src, set()).add(replica)
        if age_ms > p.spec.watermark.publisher_timeout * 1000 or value["wm"] < 0:
            continue
        found.watermarks[src] = min(found.watermarks.get(src, value["wm"]), value["wm"])
    return found


@dataclass
class Sample:
    """One `collect` and when it was taken: two of them give rates."""

    at: float
    rows: dict[str, VertexStatus]

    @classmethod
    async def take(cls, js: JetStreamContext, p: Pipeline) -> Sample:
        return cls(time.monotonic(), {r.name: r for r in await collect(js, p)})


@dataclass
class Rates:
    into: float | None = None  # messages/s arriving in its buffer
    out: float | None = None  # messages/s it finished (acked); for a source, what it wrote


def rates(p: Pipeline, before: Sample | None, now: Sample) -> dict[str, Rates]:
    """Per vertex, from the growth of its buffer's totals between two samples. A source has no
    buffer: its rate is what arrives in the buffers it alone feeds (unknown when shared)."""
    dt = now.at - before.at if before is not None else 0.0
    out: dict[str, Rates] = {}
    for name, r in now.rows.items():
        b = before.rows.get(name) if before is not None else None
        if (b is None or dt <= 0 or r.processed is None or b.processed is None
                or r.appended is None or b.appended is None):
            out[name] = Rates()
            continue
        # Totals only grow; a smaller one means the buffer was re-created: count from zero.
        out[name] = Rates(max(0.0, (r.appended - b.appended) / dt), max(0.0, (r.processed - b.processed) / dt))
    for v in p.spec.vertices:
        if v.kind == "source" and v.name in out:
            fed = [out[e.to].into if e.to in out and len(p.in_edges(e.to)) == 1 else None for e in p.out_edges(v.name)]
            known = [f for f in fed if f is not None]
            out[v.name] = Rates(None, sum(known) if fed and len(known) == len(fed) else None)
    return out


def connection_counts(monitor_url: str, pipeline: str) -> Counter[str]:
    """Client connections per vertex, from nats-server's /connz: every worker replica connects
    with the name `natsflow-<pipeline>-<vertex>` (blocking; call in a thread). `monitor_url` may
    list every server of a cluster, comma-separated: a client is connected to one of them."""
    counts: Counter[str] = Counter()
    urls = [u.strip() for u in monitor_url.split(",") if u.strip()]
    failed: list[OSError | ValueError] = []
    for url in urls:
        try:
            counts.update(_server_connections(url, f"natsflow-{pipeline}-"))
        except (OSError, ValueError) as exc:  # a server that is down holds no connections: count the rest
            failed.append(exc)
    if failed and len(failed) == len(urls):
        raise failed[0]
    return counts


def _server_connections(monitor_url: str, prefix: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    offset = 0
    while True:
        url = f"{monitor_url.rstrip('/')}/connz?limit=1024&offset={offset}"
        with urllib.request.urlopen(url, timeout=2) as r:
            page = json.load(r)
        conns = page.get("connections") or []
        counts.update(c["name"][len(prefix):] for c in conns if (c.get("name") or "").startswith(prefix))
        offset += len(conns)
        if not conns or offset >= page.get("total", 0):
            return counts


def render_table(rows: list[VertexStatus], rate: dict[str, Rates] | None = None,
                 replicas: Counter[str] | None = None) -> str:
    def n(x) -> str:
        return "-" if x is None else f"{x:,}"

    def per_s(x) -> str:
        return "-" if x is None else f"{x:,.1f}"

    def wm(ms) -> str:
        return "-" if ms is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000))

    rate = rate or {}
    head = (f"{'vertex':<16}{'kind':<8}{'replicas':>9}{'in/s':>10}{'out/s':>10}{'pending':>10}{'ack-pend':>10}"
            f"{'held':>9}{'buffer':>16}{'pulls':>7}{'dlq':>7}  watermark (UTC)")
    lines = [head, "-" * len(head)]
    for r in rows:
        buf = "-" if r.buffered is None else f"{r.buffered:,}/{r.capacity:,}"
        count = replicas.get(r.name, 0) if replicas is not None else r.replicas
        rr = rate.get(r.name, Rates())
        lines.append(f"{r.shown_name:<16}{r.kind:<8}{n(count):>9}{per_s(rr.into):>10}{per_s(rr.out):>10}"
                     f"{n(r.pending):>10}{n(r.ack_pending):>10}{n(r.held):>9}{buf:>16}"
                     f"{n(r.readers):>7}{n(r.dead_letters):>7}  {wm(r.watermark_ms)}")
    placed = [bp for r in rows for bp in r.buffers]
    if placed:
        lines += ["", render_buffers(placed)]
    return "\n".join(lines)


def render_buffers(placed: list[BufferPlacement]) -> str:
    """One line per buffer stream: replicas, leader, replicas that are not current."""
    width = max(len("buffer"), *(len(bp.stream) for bp in placed)) + 2
    head = f"{'buffer':<{width}}{'replicas':>8}  {'leader':<10}  not current"
    lines = [head, "-" * len(head)]
    for bp in placed:
        behind = ", ".join(bp.not_current) or "-"
        lines.append(f"{bp.stream:<{width}}{bp.replicas:>8}  {bp.leader or '-':<10}  {behind}")
    return "\n".join(lines)


async def show(js: JetStreamContext, p: Pipeline, watch: float | None = None, monitor_url: str | None = None,
               rate_window: float = 1.0) -> None:
    """Print the table once (two samples `rate_window` apart, for rates) or every `watch` seconds.
    Replicas: client connections from the server's /connz when its monitoring URL is known, else
    replicas beating in the watermark bucket (vertices with out-edges only)."""
    before = await Sample.take(js, p)
    await asyncio.sleep(rate_window)
    while True:
        try:
            now = await Sample.take(js, p)
        except (TimeoutError, nats_errors.Error) as exc:
            if not watch:
                raise
            # A cluster electing a new leader answers nothing for a few seconds: keep watching.
            print(f"cannot read JetStream ({type(exc).__name__}: {exc}); retrying", flush=True)
            await asyncio.sleep(watch)
            continue
        replicas = None
        if monitor_url:
            try:
                replicas = await asyncio.to_thread(connection_counts, monitor_url, p.name)
            except (OSError, ValueError):  # unreachable or not JSON: replicas from heartbeats instead
                pass
        table = render_table(list(now.rows.values()), rates(p, before, now), replicas)
        if not watch:
            print(table)
            return
        print("\x1b[2J\x1b[H" + f"pipeline {p.name}   {time.strftime('%H:%M:%S')}\n" + table, flush=True)
        before = now
        await asyncio.sleep(watch)
