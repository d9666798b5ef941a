"""Reading an ordered vertex's buffer (`spec.ordered: true`): partition by partition, each in
stream order, only the partitions this replica holds a lease for (runtime/ownership.py).

The forward loop fetches one batch at a time; a batch comes from one partition and holds its
oldest unprocessed messages in stream order, and the loop acks it (in that order) before it
fetches again, so a partition's next batch is never handed out while an earlier one is in
process. A batch is never nak'd while the partition is ours (forward.py retries it in place), so
a redelivery cannot let a later message overtake an earlier one.

Taking a partition over (its owner was killed, or handed it back): the new owner first waits until
no pull request of the previous owner is left on the consumer, then reads the consumer's ack floor
and delivered sequence: every message between the two is still to be processed (owners ack in
order). Until all of those have come back (after the ack wait, or at once if they were nak'd) it
holds whatever newer message arrives; then it hands them all out in stream order. Outputs of a
message the previous owner had already processed keep their deterministic msg ids, so JetStream
drops them as duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from framework.isb import envelope, names
from framework.isb.reader import BufferReader, held_inputs_back_within, quiet_consumer
from framework.runtime.leased import follow_leases
from framework.runtime.ownership import Lease, PartitionLeases, bucket_name, provision_bucket
from framework.spec import Pipeline
from framework.watermark.marks import replica_id

log = logging.getLogger("natsflow.ordered")


@dataclass
class OrderedPartition:
    """One owned partition: its reader and what arrived but was not handed out yet."""

    index: int | None
    lease: Lease
    reader: BufferReader
    waiting: dict[int, Msg] = field(default_factory=dict)  # stream sequence -> message
    recovering: int = 0  # messages a previous owner held that have not come back yet
    recover_to: int = 0  # the highest sequence delivered before we took over
    recover_by: float = 0.0  # monotonic; after this we stop waiting for them
    acked_to: int = 0  # the highest sequence we acked: anything at or below it is done

    def take(self, msgs: list[Msg]) -> list[Msg]:
        """Keep new arrivals; return those already done (a redelivery whose ack was lost)."""
        done = []
        for m in msgs:
            seq = envelope.stream_sequence(m)
            if seq <= self.acked_to:
                done.append(m)
                continue
            if self.recovering and seq <= self.recover_to and seq not in self.waiting:
                self.recovering -= 1
            self.waiting[seq] = m
        return done

    def next_batch(self, size: int) -> list[Msg]:
        """The oldest `size` waiting messages in stream order, once nothing older can still come."""
        if self.recovering:
            if time.monotonic() < self.recover_by:
                return []
            log.warning("partition %d: %d message(s) a previous owner held did not come back in time; "
                        "going on without them", self.index or 0, self.recovering)
            self.recovering = 0
        out = [self.waiting.pop(seq) for seq in sorted(self.waiting)[:size]]
        return out


class OrderedReader:
    """The `Reads` of an ordered vertex: follows its partition leases and hands out one owned
    partition's messages per batch, round robin over the partitions."""

    def __init__(self, p: Pipeline, vertex: str, nc: Client, js: JetStreamContext, batch_size: int,
                 ack_wait: float, stopping: asyncio.Event):
        self.p, self.vertex, self.nc, self.js = p, vertex, nc, js
        self.stream, self.consumer = names.stream_name(p.name, vertex), names.consumer_name(p.name, vertex)
        self.batch_size, self.ack_wait, self.stopping = batch_size, ack_wait, stopping
        self.all_parts = p.partitions(vertex)
        self.ttl = p.spec.ordering.lease_ttl
        self.parts: dict[int | None, OrderedPartition] = {}
        self.leases: PartitionLeases | None = None
        self._handed: dict[int, OrderedPartition] = {}  # id(message) -> its partition, until acked or nak'd
        self._turn = 0
        self._arrived = asyncio.Event()  # set by every owned partition's reader on a delivery
        self._closed = False

    async def start(self) -> None:
        await provision_bucket(self.js, self.p.name, self.p.buffers_for(None))  # `provision` may not have run
        kv = await self.js.key_value(bucket_name(self.p.name))
        self.leases = PartitionLeases(kv, self.vertex, self.all_parts, self.ttl, replica_id(), role="ordered")
        await self.leases.start()
        log.info("ordered %s: replica %s claims its share of %d partition(s) (lease ttl %gs)", self.vertex,
                 self.leases.replica, len(self.all_parts), self.ttl)

    def holds(self, msgs: list[Msg]) -> bool:
        """Every message's partition is still ours (its lease valid): a failed batch may be retried."""
        return all((ps := self._handed.get(id(m))) is not None and ps.lease.valid()
                   and self.parts.get(ps.index) is ps for m in msgs)

    # ---- Reads -------------------------------------------------------------------------------

    async def fetch(self, timeout: float) -> list[Msg]:
        """The next batch of one owned partition; waits at most `timeout` for one."""
        assert self.leases is not None
        deadline = time.monotonic() + timeout
        while not self._closed:
            await self._follow_leases()
            if not self.parts:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.leases.changed.wait(), max(0.0, deadline - time.monotonic()))
            else:
                self._arrived.clear()  # before looking: a delivery from here on wakes the wait below
                batch = await self._next_ready()
                if batch:
                    return batch
                if not any(ps.reader.buffered for ps in self.parts.values()):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return []
        return []

    async def _next_ready(self) -> list[Msg]:
        """A batch of the first owned partition (round robin) that has one now, without waiting."""
        order = list(self.parts.values())
        for k in range(len(order)):
            ps = order[(self._turn + k) % len(order)]
            if not ps.lease.valid():
                await self._fence(ps)
                continue
            batch = await self._read(ps)
            if batch:
                self._turn = (self._turn + k + 1) % len(order)
                for m in batch:
                    self._handed[id(m)] = ps
                return batch
        return []

    async def _read(self, ps: OrderedPartition) -> list[Msg]:
        batch = ps.next_batch(self.batch_size)
        if batch:
            return batch
        done = ps.take(await ps.reader.fetch(0.0))
        if done:
            await ps.reader.ack(done)
        return ps.next_batch(self.batch_size)

    async def ack(self, msgs: list[Msg]) -> None:
        for ps, part in self._split(msgs):
            await ps.reader.ack(part)
            ps.acked_to = max(ps.acked_to, max(envelope.stream_sequence(m) for m in part))

    async def nak(self, msgs: list[Msg]) -> None:
        for ps, part in self._split(msgs):
            await ps.reader.nak(part)

    def _split(self, msgs: list[Msg]) -> list[tuple[OrderedPartition, list[Msg]]]:
        by_part: dict[int, tuple[OrderedPartition, list[Msg]]] = {}
        for m in msgs:
            ps = self._handed.pop(id(m), None)
            if ps is not None:
                by_part.setdefault(id(ps), (ps, []))[1].append(m)
        return list(by_part.values())

    def interrupt(self) -> None:
        self._closed = True
        self._arrived.set()
        for ps in self.parts.values():
            ps.reader.interrupt()
        if self.leases is not None:
            self.leases.claiming = False
            self.leases.changed.set()

    async def close(self) -> None:
        self._closed = True
        for ps in list(self.parts.values()):
            await self._hand_back(ps, "stopping")
        if self.leases is not None:
            await self.leases.close()

    # ---- ownership ---------------------------------------------------------------------------

    async def _follow_leases(self) -> None:
        """Open what we acquired, hand back what is above our share, fence what we lost."""
        leases = self.leases
        assert leases is not None
        if leases.changed.is_set() and await follow_leases(leases, self.parts, self.stopping, self._open,
                                                           self._hand_back, self._fence, f"ordered {self.vertex}"):
            leases.changed.set()  # try again on the next fetch

    async def _open(self, part: int | None, lease: Lease) -> None:
        stream = names.stream_name(self.p.name, self.vertex, part)
        consumer = names.consumer_name(self.p.name, self.vertex, part)
        info = await quiet_consumer(self.js, stream, consumer, lambda: lease.valid() and not self.stopping.is_set(),
                                    f"ordered {self.vertex}")
        if info is None:
            return
        reader = BufferReader(self.nc, stream, consumer, self.batch_size, ack_wait=self.ack_wait,
                              may_send=lease.valid, arrivals=self._arrived)
        await reader.start()
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        # Every owner acks in stream order and a partition's sequences have no gaps, so all of
        # (ack floor, delivered] is still in the stream: held by a previous owner (back after the ack
        # wait) or nak'd by one that stopped (back within its pull expiry: BufferReader.nak). More
        # than that (acks out of order before the pipeline was ordered) only makes us wait until
        # recover_by.
        recover_by = time.monotonic() + held_inputs_back_within(self.ack_wait, self.ttl)
        ps = OrderedPartition(part, lease, reader, recovering=max(info.num_ack_pending or 0, delivered - floor),
                              recover_to=delivered, recover_by=recover_by, acked_to=floor)
        self.parts[part] = ps
        log.info("ordered %s partition %d: reading from sequence %d (lease rev %d); %d message(s) a previous owner "
                 "held come first", self.vertex, part or 0, ps.acked_to + 1, lease.rev, ps.recovering)

    async def _hand_back(self, ps: OrderedPartition, why: str) -> None:
        """Graceful: nak what waits, in stream order, close the reader, then release the lease."""
        assert self.leases is not None
        self.parts.pop(ps.index, None)
        waiting = [ps.waiting[seq] for seq in sorted(ps.waiting)]
        ps.waiting.clear()
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await ps.reader.nak(waiting)
            await ps.reader.close()
            await self.nc.flush(timeout=5)
        await self.leases.release(ps.index)
        log.info("ordered %s partition %d: stopped reading (%s); handed back %d message(s)", self.vertex,
                 ps.index or 0, why, len(waiting))

    async def _fence(self, ps: OrderedPartition) -> None:
        """The lease ran out or was taken over: send nothing more (the reader already refuses)."""
        assert self.leases is not None
        self.parts.pop(ps.index, None)
        ps.reader.interrupt()
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await ps.reader.close()
        self.leases.forget(ps.index)
        log.warning("ordered %s partition %d: stopped reading (lease %s); the next owner starts at its ack floor",
                    self.vertex, ps.index or 0, "taken over" if ps.lease.lost else "not renewed in time")
