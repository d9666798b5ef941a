"""Who reads which partition of a reduce (or of an ordered map or sink, runtime/ordered.py):
leases in the pipeline's KV bucket `nf_<pipeline>_leases`.

A window's inputs must all reach one reader, and a key's messages in order through one reader,
so each partition has at most one owner at a time. The keys (`<vertex>` is the vertex's name,
`<i>` the partition, 0 when unpartitioned):

  <vertex>.p.<i>     {"owner": <replica id, "" when released>, "wm": ms, "done": ms, "ts": ms}
  <vertex>.m.<id>    {"ts": ms, "owns": [i, ...], "held": n, "windows": n}   a live replica

Every lease change is a compare-and-set on the key's revision. No machine's clock is trusted
against another's: an observer counts a lease (or a replica) as expired when its revision has not
changed for `ttl` on the observer's own monotonic clock. The owner renews every ttl/4 and is
*fenced* — its partition reader sends no pull, ack, nak or in-progress — once 3/4 of the ttl have
passed since it sent its last successful renewal; that renewal reached the server after it was
sent, so no observer can count a whole ttl from seeing it before the owner has stopped.

Each replica claims its fair share, ceil(partitions / live replicas), preferring partitions by a
hash of (replica id, partition) so that replicas spread out, and marks the partitions above its
share for release: the reduce hands them back (naks their inputs, closes the reader) and only then
calls `release`, which keeps the partition's watermarks in the entry for the next owner.

`wm` is the partition's input watermark recorded before windows up to it are emitted (the next
owner judges lateness against it), `done` the one up to which windows have been emitted (what
any replica may promise downstream for a partition it does not own).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

from framework.isb import names
from framework.isb.reconcile import ensure_kv_bucket
from framework.spec import DEFAULT_BUFFERS, Pipeline, ResolvedBuffers
from framework.watermark.marks import UNKNOWN

log = logging.getLogger("natsflow.ownership")

RENEW_FRACTION = 0.25  # renew every ttl/4
FENCE_FRACTION = 0.75  # stop reading 3/4 ttl after the last successful renewal was sent
_KEY_UNSAFE = re.compile(r"[^-/_=a-zA-Z0-9]")


def bucket_name(pipeline: str) -> str:
    """The leases bucket of `pipeline` (named in isb/names.py)."""
    return names.leases_bucket(pipeline)


async def provision_bucket(js: JetStreamContext, pipeline: str, buffers: ResolvedBuffers = DEFAULT_BUFFERS,
                           update: bool = False) -> str:
    """Create the leases bucket with `buffers`' replicas/storage if missing (`update`: also
    reconcile an existing one, what `provision` does)."""
    return await ensure_kv_bucket(js, bucket_name(pipeline), f"natsflow reduce partition leases of pipeline {pipeline}",
                                  buffers, update)


def partition_key(vertex: str, partition: int | None) -> str:
    """The KV key of one partition's lease."""
    return f"{vertex}.p.{partition or 0}"


def member_key(vertex: str, replica: str) -> str:
    """The KV key of one replica's heartbeat."""
    return f"{vertex}.m.{_KEY_UNSAFE.sub('-', replica)}"


@dataclass
class Lease:
    """A partition this replica holds."""

    partition: int | None
    rev: int
    deadline: float  # monotonic; from then on the partition is fenced
    wm: int = UNKNOWN  # what the previous owner recorded; the reduce keeps these current
    done: int = UNKNOWN
    releasing: bool = False  # above our share: the reduce is to hand it back
    lost: bool = False  # someone else holds it now

    def valid(self) -> bool:
        return not self.lost and time.monotonic() < self.deadline


@dataclass
class _Seen:
    """A key as this replica last saw it, and since when (its own clock) at that revision."""

    rev: int
    since: float
    value: dict[str, Any] = field(default_factory=dict)


class PartitionLeases:
    """The leases of one replica of one reduce vertex; a background task renews, claims and
    marks for release. `changed` is set whenever the reduce has something to do: a partition
    acquired, to be released, or lost."""

    def __init__(self, kv: KeyValue, vertex: str, partitions: list[int | None], ttl: float, replica: str,
                 role: str = "reduce"):
        self._kv = kv
        self.vertex = vertex
        self.role = role  # for logs: "reduce", or "ordered" for an ordered map or sink
        self.partitions = partitions
        self.ttl = ttl
        self.replica = replica
        self.owned: dict[int | None, Lease] = {}
        self.changed = asyncio.Event()
        self.stats = {"held": 0, "windows": 0}
        self._leases: dict[int | None, _Seen] = {}
        self._members: dict[str, _Seen] = {}
        self._by_key = {partition_key(vertex, p): p for p in partitions}
        self._member_key = member_key(vertex, replica)
        self._write = asyncio.Lock()  # one compare-and-set at a time per lease
        self._wake = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._ready = asyncio.Event()
        self.claiming = True  # off while the replica stops: it hands partitions back, takes none
        self._closing = False
        self._next_renew = 0.0
        self._warned = 0.0
        digest = {p: hashlib.sha1(f"{replica}:{p}".encode()).hexdigest() for p in partitions}
        self._preference = sorted(partitions, key=lambda p: digest[p])

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self, wait_ready: float = 5.0) -> None:
        self._watcher = watcher = await self._kv.watch(f"{self.vertex}.>")
        self._watch_task = asyncio.create_task(self._pump(watcher), name=f"leases-watch-{self.vertex}")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_ready)
        await self._beat()
        self._task = asyncio.create_task(self._run(), name=f"leases-{self.vertex}")

    async def close(self) -> None:
        """Stop renewing (leases still held run out after the ttl) and leave the member list."""
        self.claiming = False
        self._closing = True
        self._wake.set()
        if self._task is not None:
            # A flag, not only cancel(): Python 3.11's wait_for can swallow a cancellation.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            self._task.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            if self._watcher is not None:
                await self._watcher.stop()  # type: ignore[no-untyped-call]  # untyped in nats-py
            await self._kv.delete(self._member_key)

    # ---- what the reduce calls ---------------------------------------------------------------

    async def record(self, partition: int | None, wm: int) -> bool:
        """Renew the lease with watermark `wm` before windows up to it are emitted, so an owner
        taking over after a crash judges lateness against exactly this. False: lease lost."""
        lease = self.owned.get(partition)
        if lease is None or not lease.valid():
            return False
        lease.wm = max(lease.wm, wm)
        await self._renew(lease)
        return lease.valid()

    async def release(self, partition: int | None) -> None:
        """Give a handed-back partition up (its reader is closed): owner "" and its watermarks
        stay in the entry for the next owner."""
        lease = self.owned.pop(partition, None)
        if lease is None or lease.lost:
            return
        async with self._write:
            try:
                await self._kv.update(partition_key(self.vertex, partition), self._lease_value("", lease),
                                      last=lease.rev)
            except KeyWrongLastSequenceError:
                pass  # someone took it over already
            except (TimeoutError, nats_errors.Error) as exc:
                log.warning("%s %s: could not release partition %d (%s); it expires after %.0fs", self.role,
                            self.vertex, partition or 0, exc, self.ttl)
        self._wake.set()

    def forget(self, partition: int | None) -> None:
        """A fenced partition: drop it without writing (someone else may own it now)."""
        self.owned.pop(partition, None)
        self._wake.set()

    def floors(self, partition: int | None) -> tuple[int, int]:
        """(wm, done) of a partition as its entry last showed them; UNKNOWN when never owned."""
        seen = self._leases.get(partition)
        if seen is None:
            return UNKNOWN, UNKNOWN
        return int(seen.value.get("wm", UNKNOWN)), int(seen.value.get("done", UNKNOWN))

    # ---- the background task -----------------------------------------------------------------

    async def _pump(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:
                self._ready.set()
                continue
            gone = entry.operation in (KV_DEL, KV_PURGE) or not entry.value
            table: dict[Any, _Seen]
            name: Any
            if ".p." in entry.key:
                if entry.key not in self._by_key:
                    continue  # a partition this pipeline no longer has
                table, name = self._leases, self._by_key[entry.key]
            else:
                table, name = self._members, entry.key
            if gone:
                table.pop(name, None)
            else:
                try:
                    value = json.loads(entry.value)
                except ValueError:
                    continue
                old = table.get(name)
                if old is None or old.rev != entry.revision:
                    table[name] = _Seen(entry.revision, time.monotonic(), value)
            self._wake.set()

    async def _run(self) -> None:
        tick = max(0.05, self.ttl * RENEW_FRACTION / 2)
        while not self._closing:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), tick)
            self._wake.clear()
            if self._closing:
                return
            try:
                await self._step()
            except (TimeoutError, nats_errors.Error) as exc:
                if time.monotonic() - self._warned > 5:
                    self._warned = time.monotonic()
                    log.warning("%s %s: lease bookkeeping failed (%s: %s); retrying", self.role, self.vertex,
                                type(exc).__name__, exc)

    async def _step(self) -> None:
        now = time.monotonic()
        if now >= self._next_renew:
            self._next_renew = now + self.ttl * RENEW_FRACTION
            for lease in list(self.owned.values()):
                await self._renew(lease)
            await self._beat()
            await self._forget_dead_members()
        for lease in self.owned.values():
            if not lease.valid():
                self.changed.set()  # the reduce fences it
        share = math.ceil(len(self.partitions) / max(1, len(self._live_members())))
        keeping = [p for p in self._preference if p in self.owned and not self.owned[p].releasing]
        if len(keeping) > share:
            for p in keeping[share:]:
                self.owned[p].releasing = True
                log.info("%s %s: releasing partition %d (share %d of %d partitions)", self.role, self.vertex,
                         p or 0, share, len(self.partitions))
            self.changed.set()
        elif len(keeping) < share and self.claiming:
            for p in self._claimable():
                if await self._claim(p):
                    keeping.append(p)
                    if len(keeping) >= share:
                        break

    def _live_members(self) -> set[str]:
        now = time.monotonic()
        live = {k for k, s in self._members.items() if now - s.since < self.ttl}
        return live | {self._member_key}

    async def _forget_dead_members(self) -> None:
        """Delete the entries of replicas silent for a whole ttl (killed ones leave theirs), so a
        replica starting later does not count them for a ttl of its own."""
        now = time.monotonic()
        for key, seen in list(self._members.items()):
            if key != self._member_key and now - seen.since >= self.ttl:
                self._members.pop(key, None)
                with contextlib.suppress(KeyWrongLastSequenceError):  # it came back after all
                    await self._kv.delete(key, last=seen.rev)

    def _claimable(self) -> list[int | None]:
        """Partitions nobody holds, in our order of preference: never owned, released, or not
        renewed for a whole ttl as far as we have seen."""
        now = time.monotonic()
        out = []
        for p in self._preference:
            if p in self.owned:
                continue
            seen = self._leases.get(p)
            if seen is None or not seen.value.get("owner") or now - seen.since >= self.ttl:
                out.append(p)
        return out

    async def _claim(self, partition: int | None) -> bool:
        seen = self._leases.get(partition)
        wm, done = self.floors(partition)
        lease = Lease(partition, 0, 0.0, wm, done)
        key = partition_key(self.vertex, partition)
        async with self._write:
            sent = time.monotonic()
            try:
                if seen is None:
                    lease.rev = await self._kv.create(key, self._lease_value(self.replica, lease))
                else:
                    lease.rev = await self._kv.update(key, self._lease_value(self.replica, lease), last=seen.rev)
            except KeyWrongLastSequenceError:
                return False  # another replica was quicker, or the owner renewed after all
        lease.deadline = sent + self.ttl * FENCE_FRACTION
        self.owned[partition] = lease
        previous = "never owned" if seen is None else f"expired lease of {seen.value['owner']}" \
            if seen.value.get("owner") else "released"
        log.info("%s %s: acquired partition %d (lease rev %d; %s)", self.role, self.vertex, partition or 0, lease.rev,
                 previous)
        self.changed.set()
        return True

    async def _renew(self, lease: Lease) -> None:
        async with self._write:
            if lease.lost or self.owned.get(lease.partition) is not lease:
                return
            sent = time.monotonic()
            try:
                lease.rev = await self._kv.update(partition_key(self.vertex, lease.partition),
                                                  self._lease_value(self.replica, lease), last=lease.rev)
            except KeyWrongLastSequenceError:
                lease.lost = True
                log.warning("%s %s: the lease of partition %d was taken over", self.role, self.vertex,
                            lease.partition or 0)
                self.changed.set()
                return
            except (TimeoutError, nats_errors.Error) as exc:
                log.warning("%s %s: renewing partition %d failed (%s); fenced in %.1fs unless a renewal "
                            "succeeds", self.role, self.vertex, lease.partition or 0, exc,
                            max(0.0, lease.deadline - time.monotonic()))
                return
            lease.deadline = max(lease.deadline, sent + self.ttl * FENCE_FRACTION)

    async def _beat(self) -> None:
        value = {"ts": int(time.time() * 1000), "owns": sorted(p or 0 for p in self.owned), **self.stats}
        try:
            await self._kv.put(self._member_key, json.dumps(value).encode())
        except (TimeoutError, nats_errors.Error) as exc:
            log.warning("%s %s: member heartbeat failed (%s)", self.role, self.vertex, exc)

    def _lease_value(self, owner: str, lease: Lease) -> bytes:
        return json.dumps({"owner": owner, "wm": lease.wm, "done": lease.done, "ts": int(time.time() * 1000)}).encode()


@dataclass
class Holding:
    """What a reduce's live replicas report in their heartbeats (each every ttl/4)."""

    held: int = 0  # inputs held unacked in open windows
    windows: int = 0  # windows open (keys x windows)
    owners: dict[str, list[int]] = field(default_factory=dict)  # replica -> partitions it reads


async def holdings(js: JetStreamContext, p: Pipeline) -> dict[str, Holding]:
    """Per reduce vertex of pipeline `p`, summed over the replicas whose heartbeat is younger than
    the vertex's lease ttl (`natsflow status`, the UI)."""
    ttls = {v.name: v.udf.windowing.lease_ttl for v in p.spec.vertices
            if v.udf is not None and v.udf.windowing is not None}
    out = {name: Holding() for name in ttls}
    try:
        kv = await js.key_value(bucket_name(p.name))
        keys = await kv.keys()
    except Exception:
        return out
    now = int(time.time() * 1000)
    for key in keys:
        vertex, kind, replica = (key.split(".", 2) + ["", ""])[:3]
        if kind != "m" or vertex not in ttls:
            continue
        try:
            value = json.loads((await kv.get(key)).value or b"")
        except Exception:
            continue
        if now - int(value.get("ts", 0)) > ttls[vertex] * 1000:
            continue
        h = out[vertex]
        h.held += int(value.get("held", 0))
        h.windows += int(value.get("windows", 0))
        h.owners[replica] = list(value.get("owns", []))
    return out

