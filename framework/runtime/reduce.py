"""The reduce vertex: keyed event-time windows closed by the watermark.

Crash safety without a local disk: every input stays unacked in JetStream (held by the reader,
which keeps it in progress) until every window it belongs to has been emitted and its outputs are
stored; only then is it acked. A replica that dies loses nothing: JetStream redelivers the unacked
inputs, the windows are rebuilt, and each (key, window) result carries the msg id `<vertex>:
<partition>:<key hash>:<start>:<end>:<i>`, so a result emitted before the crash is dropped as a
duplicate. The price: a partition can hold at most its consumer's max_ack_pending (=
bufferMaxLength) inputs in open windows.

Scale-out: each partition is read by the one replica holding its lease (ownership.py). Partitions
move when replicas come and go: gracefully (the owner naks every input it holds and closes its
reader before it releases the lease) or after a crash (the lease runs out after `leaseTtl`, and
JetStream redelivers the dead owner's inputs after the ack wait). A new owner first waits until no
pull request of anyone else is waiting on the partition's consumer, then until every input a
previous owner held has come back, before it closes a window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from nats import errors as nats_errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from framework.isb import envelope, names
from framework.isb.reader import BufferReader, held_inputs_back_within, quiet_consumer
from framework.runtime.leased import follow_leases
from framework.runtime.lifecycle import VertexIO, VertexRuntime
from framework.runtime.ownership import (
    Lease,
    PartitionLeases,
    bucket_name,
    provision_bucket,
)
from framework.runtime.reduce_windows import Partition, WindowEmitter
from framework.runtime.routing import Outgoing, describe
from framework.sdk import Datum
from framework.spec import load_handler
from framework.spec.udf import ReduceOptions
from framework.watermark.fetcher import WatermarkFetcher
from framework.watermark.marks import UNKNOWN, replica_id

if TYPE_CHECKING:
    from framework.numaflow.reduce import NumaflowReduce

log = logging.getLogger("natsflow.reduce")


class ReduceKind:
    """The VertexKind of a reduce: claims partition leases, then reads what it owns (Reducer)."""

    def __init__(self, rt: VertexRuntime, io: VertexIO):
        self.rt = rt
        self.io = io
        self.reducer: Reducer | None = None  # once the leases are started
        self.program: NumaflowReduce | None = None  # a Numaflow reducer's program

    def on_stop(self) -> None:
        if self.reducer is not None:
            self.reducer.on_stop()

    def on_heartbeat(self) -> bool:
        return False

    async def _program(self) -> NumaflowReduce:
        """Start the vertex's Numaflow reducer program; it is stopped with the vertex."""
        # Imported here: grpc and the SDK's protos are the optional extra natsflow[numaflow].
        from framework.numaflow.launch import launch_for
        from framework.numaflow.reduce import NumaflowReduce

        udf = self.rt.v.udf
        assert udf is not None and udf.numaflow is not None
        self.program = NumaflowReduce(launch_for(self.rt.p, self.rt.v.name, udf.numaflow, "udf.numaflow",
                                                 self.rt.base_dir))
        await self.program.start()
        return self.program

    def input_watermark(self) -> int | None:
        return None

    async def serve(self) -> None:
        rt, js = self.rt, self.io.js
        udf = rt.v.udf
        assert udf is not None and self.io.kv is not None
        cfg = udf.windowing
        assert cfg is not None
        fn = load_handler(udf.reduce.handler, rt.base_dir) if udf.reduce is not None else await self._program()
        emitter = WindowEmitter(rt.v.name, fn, udf.retry, udf.timeout, rt.metrics, rt.tracer)
        rt.loaded = True  # for /readyz
        all_parts = rt.p.partitions(rt.v.name)
        await provision_bucket(js, rt.p.name, rt.p.buffers_for(None))  # `provision` may not have run
        leases = PartitionLeases(await js.key_value(bucket_name(rt.p.name)), rt.v.name, all_parts, cfg.lease_ttl,
                                 replica_id())
        await leases.start()
        log.info("reduce %s: replica %s claims its share of %d partition(s) (lease ttl %gs)", rt.v.name,
                 leases.replica, len(all_parts), cfg.lease_ttl)
        self.reducer = Reducer(rt, self.io, self.io.kv, cfg, emitter, leases, all_parts)
        try:
            await self.reducer.run()
        finally:
            if self.program is not None:
                await self.program.close()


class Reducer:
    """One replica's partitions of a reduce: follows the leases, reads each owned partition,
    assigns inputs to windows, closes the windows the watermark passed, and acks their inputs."""

    def __init__(self, rt: VertexRuntime, io: VertexIO, kv: KeyValue, cfg: ReduceOptions, emitter: WindowEmitter,
                 leases: PartitionLeases, all_parts: list[int | None]):
        self.p, self.v, self.limits, self.metrics, self.stopping = rt.p, rt.v, rt.limits, rt.metrics, rt.stopping
        self.rt = rt
        self.nc, self.js, self.kv, self.router = io.nc, io.js, kv, io.router
        self.dead_letters = io.dead_letters
        self.cfg = cfg
        self.lateness = int(cfg.allowed_lateness * 1000)
        self.emitter = emitter
        self.leases = leases
        self.all_parts = all_parts
        self.parts: dict[int | None, Partition] = {}

    def on_stop(self) -> None:
        for ps in self.parts.values():
            ps.reader.interrupt()
        self.leases.claiming = False
        self.leases.changed.set()

    async def run(self) -> None:
        try:
            while not self.stopping.is_set():
                await self._follow_leases()
                if not self.parts:  # standing by: nothing to read until a lease comes our way
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.leases.changed.wait(), self.limits.read_timeout)
                else:
                    await self.read_round(self.limits.read_timeout / len(self.parts))
                self._report()
                await self.publish_watermark()
                self.rt.check_stuck()
        finally:
            for ps in list(self.parts.values()):
                await self._hand_back(ps, "stopping")
            await self.leases.close()

    async def dead_letter(self, failed: list[tuple[Msg, str]]) -> None:
        await self.dead_letters.inputs(failed)

    async def read_round(self, wait: float) -> None:
        """One read of each partition owned (waiting up to `wait` for each): ingest what came,
        then close the windows the partition's watermark has passed."""
        for ps in list(self.parts.values()):
            if self.stopping.is_set() or self.leases.changed.is_set():
                return  # a partition acquired, to hand back or lost: see to it first
            msgs = await ps.reader.fetch(wait) if ps.lease.valid() else []
            if not ps.lease.valid():
                await self._fence(ps)
                continue
            if msgs:
                self.metrics.read.inc(len(msgs))
                self.metrics.batch_size.observe(len(msgs))
                await self._ingest(ps, msgs)
            await self._close_ready(ps)

    # ---- ownership -----------------------------------------------------------------------

    async def _follow_leases(self) -> None:
        await follow_leases(self.leases, self.parts, self.stopping, self._open, self._hand_back, self._fence,
                            f"reduce {self.v.name}")

    async def _open(self, part: int | None, lease: Lease) -> None:
        stream = names.stream_name(self.p.name, self.v.name, part)
        consumer = names.consumer_name(self.p.name, self.v.name, part)
        info = await quiet_consumer(self.js, stream, consumer, lambda: lease.valid() and not self.stopping.is_set(),
                                    f"reduce {self.v.name}")
        if info is None:
            return
        reader = BufferReader(self.nc, stream, consumer, self.limits.read_batch_size, ack_wait=self.limits.ack_wait,
                                may_send=lease.valid)
        fetcher = WatermarkFetcher(self.kv, self.v.name, part or 0, self.p.spec.watermark.publisher_timeout)
        await fetcher.start(wait_ready=5.0)
        await reader.start()
        recover_by = time.monotonic() + held_inputs_back_within(self.limits.ack_wait, self.cfg.lease_ttl)
        ps = Partition(part, lease, reader, fetcher, wm=lease.wm, recovering=info.num_ack_pending or 0,
                       recover_to=info.delivered.stream_seq if info.delivered else 0, recover_by=recover_by)
        self.parts[part] = ps
        log.info("reduce %s partition %d: reading (lease rev %d); waiting for %d input(s) previous owners held",
                 self.v.name, part or 0, lease.rev, ps.recovering)
        if not ps.recovering:
            self._recovered(ps)

    async def _hand_back(self, ps: Partition, why: str) -> None:
        """Graceful: nak every input we hold and close the reader, make sure the server has both,
        then release the lease. The next owner gets the inputs again at once."""
        held = [m for _, m in ps.refs.values()]
        await self._drop_partition(ps)
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await ps.reader.nak(held)
            await ps.reader.close()
            await self.nc.flush(timeout=5)
        ps.lease.wm = max(ps.lease.wm, ps.wm)
        await self.leases.release(ps.index)
        log.info("reduce %s partition %d: stopped reading (%s); handed back %d held input(s)",
                 self.v.name, ps.index or 0, why, len(held))

    async def _fence(self, ps: Partition) -> None:
        """The lease ran out or was taken over: send nothing more for the partition (the reader
        already refuses) and forget its windows; the next owner gets its inputs again."""
        await self._drop_partition(ps)
        with contextlib.suppress(nats_errors.Error, asyncio.TimeoutError):
            await ps.reader.close()
        self.leases.forget(ps.index)
        log.warning("reduce %s partition %d: stopped reading (lease %s); %d held input(s) left to the next owner",
                    self.v.name, ps.index or 0, "taken over" if ps.lease.lost else "not renewed in time", len(ps.refs))

    async def _drop_partition(self, ps: Partition) -> None:
        self.parts.pop(ps.index, None)
        ps.reader.interrupt()
        await ps.fetcher.close()

    def _recovered(self, ps: Partition) -> None:
        """Everything up to recover_to is now processed by us or by a previous owner."""
        ps.recovering = 0
        ps.processed_seq = max(ps.processed_seq, ps.recover_to)
        ps.returned = set()

    def _report(self) -> None:
        held = sum(len(ps.refs) for ps in self.parts.values())
        windows = sum(len(ps.windows) + sum(map(len, ps.sessions.values())) for ps in self.parts.values())
        self.leases.stats = {"held": held, "windows": windows}
        self.metrics.reduce_state(len(self.parts), held, windows)

    # ---- ingest --------------------------------------------------------------------------

    async def _ingest(self, ps: Partition, msgs: list[Msg]) -> None:
        late: list[tuple[Msg, Datum]] = []
        bad: list[tuple[Msg, str]] = []
        spec = self.cfg.window
        for m in msgs:
            seq = envelope.stream_sequence(m)
            ps.processed_seq = max(ps.processed_seq, seq)
            if seq in ps.refs:
                continue  # a redelivery of an input we already hold
            taken_before = seq <= ps.recover_to
            if taken_before and ps.recovering and seq not in ps.returned:
                ps.returned.add(seq)
                ps.recovering -= 1
                if not ps.recovering:
                    self._recovered(ps)
            # An input a previous owner held was on time when it took it; new ones are judged
            # against our watermark (from the start, the one the previous owner recorded).
            wm = UNKNOWN if taken_before else ps.wm
            try:
                d = envelope.decode_datum(m)
            except (ValueError, TypeError) as exc:
                bad.append((m, f"bad envelope: {exc}"))
                continue
            keys = tuple(d.keys) if self.cfg.keyed else ()
            if not ps.place(spec, keys, d, m, seq, wm, self.lateness):
                late.append((m, d))
        await self.dead_letter(bad)
        await self._late(late)
        await ps.reader.ack([m for m, _ in bad] + [m for m, _ in late])
        self.metrics.ack.inc(len(bad) + len(late))  # acked like any input (docs/metrics.md)

    async def _late(self, late: list[tuple[Msg, Datum]]) -> None:
        """Beyond the allowed lateness: to the `late: true` out-edge if there is one, else counted."""
        if not late:
            return
        if any(e.late for e in self.p.out_edges(self.v.name)):
            items, bad = [], []
            for m, d in late:
                item = Outgoing(f"{self.v.name}:late:{envelope.origin(m)}", d.id, d.value, d.event_time_ms,
                                d.keys, dict(d.headers) or None, frozenset(), late=True)
                problem = self.router.prepare(item)
                if problem is None:
                    items.append(item)
                else:
                    bad.append((m, f"UnpublishableOutput: {describe('late output', problem)}"))
            self.rt.count_writes(await self.router.write(items))
            await self.dead_letter(bad)
        else:
            self.metrics.dropped("late", len(late))
            log.warning("reduce %s dropped %d late message(s) (no late edge); first event time %d",
                        self.v.name, len(late), late[0][1].event_time_ms)

    # ---- closing windows -----------------------------------------------------------------

    async def _close_ready(self, ps: Partition) -> None:
        if ps.recovering:
            if time.monotonic() < ps.recover_by:
                return
            log.warning("reduce %s partition %d: %d input(s) previous owners held did not come back in time; "
                        "closing windows without them", self.v.name, ps.index or 0, ps.recovering)
            self._recovered(ps)
        ps.wm = max(ps.wm, ps.fetcher.compute(ps.processed_seq))
        if ps.wm == UNKNOWN:
            return
        ready = sorted((w for w in ps.open_windows() if w.end + self.lateness <= ps.wm), key=lambda w: w.end)
        if ready:
            # The lease records how far we close before we emit: an owner taking over after a
            # crash judges lateness against exactly this.
            if not await self.leases.record(ps.index, ps.wm):
                await self._fence(ps)
                return
            outgoing: list[Outgoing] = []
            failed: list[tuple[Msg, str]] = []
            for w in ready:
                try:
                    results = await self.emitter.traced_emit(ps, w)
                    # A result the server cannot take: the window's inputs are dead letters. Checked
                    # once the results are final (tracing adds headers).
                    self.router.check_outputs(results)
                    outgoing.extend(results)
                except Exception as exc:
                    failed.extend((m, f"{type(exc).__name__}: {exc}") for _, m in w.items)
            self.rt.count_writes(await self.router.write(outgoing))
            await self.dead_letter(failed)
            if not ps.lease.valid():  # the next owner emits these windows again, under the same ids
                await self._fence(ps)
                return
            done: list[Msg] = []
            session = self.cfg.window.session is not None
            for w in ready:
                ps.forget(session, w)
                for _, m in w.items:
                    seq = envelope.stream_sequence(m)
                    ref = ps.refs.get(seq)
                    if ref is not None:
                        ref[0] -= 1
                        if ref[0] == 0:
                            done.append(ps.refs.pop(seq)[1])
            await ps.reader.ack(done)
            self.metrics.ack.inc(len(done))
        ps.lease.wm = max(ps.lease.wm, ps.wm)
        ps.lease.done = max(ps.lease.done, ps.wm)  # every window up to here is emitted

    async def publish_watermark(self) -> None:
        """A result emitted from now on, by us or by whoever owns its partition next, ends after
        (the lowest partition watermark up to which windows are emitted - lateness); for the
        partitions we do not own we take what their leases last showed. Nothing is promised
        while a partition's is unknown. So a replica owning nothing does not hold back the
        readers downstream, and a partition moving to another replica keeps its promise."""
        if self.router.wm is None:
            return
        done = []
        for part in self.all_parts:
            ps = self.parts.get(part)
            wm = ps.lease.done if ps is not None else self.leases.floors(part)[1]
            if wm == UNKNOWN:
                return
            done.append(wm)
        await self.router.wm.update(min(done) - self.lateness)
