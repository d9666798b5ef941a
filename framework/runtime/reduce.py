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
import hashlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats import errors as nats_errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerInfo

from framework.isb import envelope, names
from framework.isb.reader import BufferReader
from framework.runtime.routing import Outgoing, as_bytes, describe, message_tags
from framework.sdk import Datum, Message, Window
from framework.spec.model import load_handler
from framework.runtime.bounded import HandlerTimeout, Threads, within
from framework.runtime.udf import normalize
from framework.watermark.marks import UNKNOWN, WatermarkFetcher, replica_id
from framework.runtime.worker import ReadingWorker, backoff_delays
from framework.windows import OpenWindow, add_to_sessions, assign
from framework.runtime.ownership import Lease, PartitionLeases, bucket_name, provision_bucket

log = logging.getLogger("natsflow.reduce")

QUIET_POLL_S = 0.1


@dataclass
class Partition:
    index: int | None
    lease: Lease
    reader: BufferReader
    fetcher: WatermarkFetcher
    windows: dict[tuple, OpenWindow] = field(default_factory=dict)  # fixed and sliding
    sessions: dict[tuple, list[OpenWindow]] = field(default_factory=dict)
    refs: dict[int, list] = field(default_factory=dict)  # stream seq -> [open windows left, msg]
    processed_seq: int = 0
    wm: int = UNKNOWN
    # Inputs previous owners held unacked when we took over (all with stream seq <= recover_to):
    # until all are back (or recover_by passes), no window closes, so newer messages cannot make
    # them look late; they were on time when first taken, so they are not judged late again.
    recovering: int = 0
    recover_to: int = 0
    recover_by: float = 0.0
    returned: set[int] = field(default_factory=set)

    def open_windows(self) -> list[OpenWindow]:
        return list(self.windows.values()) + [s for ss in self.sessions.values() for s in ss]


class ReduceWorker(ReadingWorker):
    async def serve(self) -> None:
        cfg = self.v.udf.reduce
        self.cfg = cfg
        self.lateness = int(cfg.allowed_lateness * 1000)
        self.fn = load_handler(cfg.handler, self.base_dir)
        self.threads = Threads("natsflow-reduce")
        self.loaded = True  # for /readyz
        self.dlq_subject = names.dlq_subject(self.p.name, self.v.name)
        self.parts: dict[int | None, Partition] = {}
        self.all_parts = names.partitions(self.p, self.v.name)
        await provision_bucket(self.js, self.p.name, self.p.buffers_for(None))  # `provision` may not have run
        self.leases = PartitionLeases(await self.js.key_value(bucket_name(self.p.name)), self.v.name,
                                      self.all_parts, cfg.lease_ttl, replica_id())
        await self.leases.start()
        log.info("reduce %s: replica %s claims its share of %d partition(s) (lease ttl %gs)", self.v.name,
                 self.leases.replica, len(self.all_parts), cfg.lease_ttl)
        try:
            while not self.stopping.is_set():
                await self._follow_leases()
                if not self.parts:  # standing by: nothing to read until a lease comes our way
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self.leases.changed.wait(), self.limits.read_timeout)
                else:
                    await self._read_round(self.limits.read_timeout / len(self.parts))
                self._report()
                await self._publish_watermark()
                self.check_stuck()
        finally:
            for ps in list(self.parts.values()):
                await self._hand_back(ps, "stopping")
            await self.leases.close()

    async def _read_round(self, wait: float) -> None:
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

    def on_stop(self) -> None:
        for ps in getattr(self, "parts", {}).values():
            ps.reader.interrupt()
        leases = getattr(self, "leases", None)
        if leases is not None:
            leases.claiming = False
            leases.changed.set()

    # ---- ownership -----------------------------------------------------------------------

    async def _follow_leases(self) -> None:
        """Open what we acquired, hand back what is above our share, fence what we lost."""
        self.leases.changed.clear()
        for part, lease in list(self.leases.owned.items()):
            ps = self.parts.get(part)
            if ps is not None:
                if not lease.valid():
                    await self._fence(ps)
                elif lease.releasing:
                    await self._hand_back(ps, "handed over")
            elif not lease.valid():
                self.leases.forget(part)
            elif lease.releasing:
                await self.leases.release(part)  # acquired and above our share before we read it
            elif not self.stopping.is_set():
                try:
                    await self._open(part, lease)
                except (nats_errors.Error, asyncio.TimeoutError) as exc:
                    log.warning("reduce %s: cannot open partition %d yet (%s: %s)", self.v.name, part or 0,
                                type(exc).__name__, exc)
        for ps in [ps for part, ps in self.parts.items() if self.leases.owned.get(part) is not ps.lease]:
            await self._fence(ps)

    async def _open(self, part: int | None, lease: Lease) -> None:
        stream, consumer = names.stream_name(self.p.name, self.v.name, part), names.consumer_name(self.p.name, self.v.name, part)
        info = await self._quiet_consumer(stream, consumer, lease)
        if info is None:
            return
        reader = BufferReader(self.nc, stream, consumer, self.limits.read_batch_size, ack_wait=self.limits.ack_wait,
                                may_send=lease.valid)
        fetcher = WatermarkFetcher(self.kv, self.v.name, part or 0, self.p.spec.watermark.publisher_timeout)
        await fetcher.start(wait_ready=5.0)
        await reader.start()
        # JetStream redelivers a dead owner's inputs once their ack wait ends (a graceful one
        # nak'd them); by then every one of them has come back.
        recover_by = time.monotonic() + 2 * self.limits.ack_wait + self.cfg.lease_ttl
        ps = Partition(part, lease, reader, fetcher, wm=lease.wm, recovering=info.num_ack_pending,
                       recover_to=info.delivered.stream_seq, recover_by=recover_by)
        self.parts[part] = ps
        log.info("reduce %s partition %d: reading (lease rev %d); waiting for %d input(s) previous owners held",
                 self.v.name, part or 0, lease.rev, ps.recovering)
        if not ps.recovering:
            self._recovered(ps)

    async def _quiet_consumer(self, stream: str, consumer: str, lease: Lease) -> ConsumerInfo | None:
        """Wait until no pull request of a previous owner waits on the consumer: the server drops
        requests whose reader unsubscribed or died, and a stuck one expires with its pull expiry.
        From then on only we receive this partition's messages, and its ack-pending count is
        everything previous owners held. None: the lease ran out meanwhile."""
        warn_at = time.monotonic() + 10
        while lease.valid() and not self.stopping.is_set():
            info = await self.js.consumer_info(stream, consumer)
            if not info.num_waiting:
                return info
            if time.monotonic() > warn_at:
                warn_at = time.monotonic() + 10
                log.warning("reduce %s: %d pull request(s) of another reader still wait on %s; not reading it yet",
                            self.v.name, info.num_waiting, consumer)
            await asyncio.sleep(QUIET_POLL_S)
        return None

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
            et = d.event_time_ms
            if spec.session is not None:
                timeout = int(spec.session.timeout * 1000)
                open_sessions = ps.sessions.get(keys, [])
                joins_open = any(s.start <= et + timeout and et <= s.end for s in open_sessions)
                if et + timeout + self.lateness <= wm and not joins_open:
                    late.append((m, d))
                    continue
                add_to_sessions(ps.sessions.setdefault(keys, []), keys, et, timeout, (d, m))
                ps.refs[seq] = [1, m]
                continue
            wins = [(s, e) for s, e in assign(spec, et) if e + self.lateness > wm]
            if not wins:
                late.append((m, d))
                continue
            for s, e in wins:
                ps.windows.setdefault((keys, s, e), OpenWindow(keys, s, e)).items.append((d, m))
            ps.refs[seq] = [len(wins), m]
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
            self.count_writes(await self.router.write(items))
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
            outgoing, failed = [], []
            for w in ready:
                try:
                    results = await self._traced_emit(ps, w)
                    # A result the server cannot take: the window's inputs are dead letters. Checked
                    # once the results are final (tracing adds headers).
                    self.router.check_outputs(results)
                    outgoing.extend(results)
                except Exception as exc:  # noqa: BLE001 - after retries: the window's inputs are dead letters
                    failed.extend((m, f"{type(exc).__name__}: {exc}") for _, m in w.items)
            self.count_writes(await self.router.write(outgoing))
            await self.dead_letter(failed)
            if not ps.lease.valid():  # the next owner emits these windows again, under the same ids
                await self._fence(ps)
                return
            done: list[Msg] = []
            for w in ready:
                self._forget(ps, w)
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

    async def _publish_watermark(self) -> None:
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

    def _forget(self, ps: Partition, w: OpenWindow) -> None:
        if self.cfg.window.session is not None:
            sessions = ps.sessions.get(w.keys, [])
            if w in sessions:
                sessions.remove(w)
            if not sessions:
                ps.sessions.pop(w.keys, None)
        else:
            ps.windows.pop((w.keys, w.start, w.end), None)

    async def _traced_emit(self, ps: Partition, w: OpenWindow) -> list[Outgoing]:
        """With tracing on, one span per window result, linked to its inputs' spans; the results
        carry its context (docs/metrics.md)."""
        if self.tracer is None:
            return await self._emit(ps, w)
        span, headers = self.tracer.start_window((d.headers for d, _ in w.items),
                                                 f"{','.join(w.keys)}@{w.start}-{w.end}")
        try:
            out = await self._emit(ps, w)
        except Exception as exc:
            self.tracer.end([span] if span else [], f"{type(exc).__name__}: {exc}")
            raise
        for o in out:
            o.headers = {**o.headers, **headers} if o.headers else headers
        self.tracer.end([span] if span else [])
        return out

    async def _emit(self, ps: Partition, w: OpenWindow) -> list[Outgoing]:
        window = Window.from_ms(w.start, w.end)
        datums = [d for d, _ in w.items]
        delays = backoff_delays(self.v.udf.retry)
        while True:
            try:
                results = await within(self._call(list(w.keys), datums, window), self.v.udf.timeout)
                break
            except Exception as exc:
                self.metrics.error.inc(1)
                delay = next(delays, None)
                if delay is None or isinstance(exc, HandlerTimeout):  # a hung call is not tried again
                    raise
                await asyncio.sleep(delay)
        key_hash = hashlib.sha1("\x1f".join(w.keys).encode()).hexdigest()[:16]
        base = f"{self.v.name}:{ps.index or 0}:{key_hash}:{w.start}:{w.end}"
        data_id = f"{','.join(w.keys)}@{w.start}-{w.end}"
        out = []
        for i, msg in enumerate(results):
            if msg.is_drop:
                continue
            out.append(Outgoing(f"{base}:{i}", data_id if i == 0 else f"{data_id}:{i}", as_bytes(msg.value),
                                w.end, list(w.keys) if msg.keys is None else list(msg.keys),
                                dict(msg.headers) if msg.headers else None, message_tags(msg)))
        return out

    async def _call(self, keys: list[str], datums: list[Datum], window: Window) -> list[Message]:
        fn: Any = self.fn() if inspect.isclass(self.fn) else self.fn
        if inspect.isasyncgenfunction(fn) or inspect.isasyncgenfunction(getattr(fn, "__call__", None)):
            return [m async for m in fn(keys, iter(datums), window)]
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
            return normalize(await fn(keys, iter(datums), window))
        return normalize(await self.threads.call(fn, keys, iter(datums), window))
