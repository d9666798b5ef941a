"""The reduce vertex: keyed event-time windows closed by the watermark.

Crash safety without a local disk: every input stays unacked in JetStream (held by the reader,
which keeps it in progress) until every window it belongs to has been emitted and its outputs are stored; only then is it
acked. A replica that dies loses nothing: JetStream redelivers the unacked inputs, the windows are
rebuilt, and each (key, window) result carries the msg id `<vertex>:<partition>:<key hash>:<start>:
<end>:<i>`, so a result emitted before the crash is dropped as a duplicate. The price: a partition
can hold at most its consumer's max_ack_pending (= bufferMaxLength) inputs in open windows.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from .. import buffer as b
from ..routing import Outgoing, as_bytes, describe, message_tags
from ..sdk import Datum, Message, Window
from ..spec import load_handler
from ..bounded import HandlerTimeout, Threads, within
from ..udf import normalize
from ..watermark import UNKNOWN, WatermarkFetcher
from ..worker import ReadingWorker, backoff_delays, decode_datum
from . import OpenWindow, add_to_sessions, assign

log = logging.getLogger("natsflow.reduce")


@dataclass
class Partition:
    index: int | None
    reader: b.BufferReader
    fetcher: WatermarkFetcher
    windows: dict[tuple, OpenWindow] = field(default_factory=dict)  # fixed and sliding
    sessions: dict[tuple, list[OpenWindow]] = field(default_factory=dict)
    refs: dict[int, list] = field(default_factory=dict)  # stream seq -> [open windows left, msg]
    processed_seq: int = 0
    wm: int = UNKNOWN
    # Inputs a previous owner held unacked when it died: until all are redelivered, newer messages
    # must not move the watermark past them (they would all look late).
    recovering: int = 0

    def open_windows(self) -> list[OpenWindow]:
        return list(self.windows.values()) + [s for ss in self.sessions.values() for s in ss]


def owned_partitions(parts: list[int | None]) -> list[int | None]:
    """Replica i of n owns every n-th partition, so a key's window is computed in one place."""
    replica = int(os.environ.get("NATSFLOW_REPLICA", "0"))
    replicas = max(1, int(os.environ.get("NATSFLOW_REPLICAS", "1")))
    return [p for i, p in enumerate(parts) if i % replicas == replica]


class ReduceWorker(ReadingWorker):
    async def serve(self) -> None:
        cfg = self.v.udf.reduce
        self.cfg = cfg
        self.lateness = int(cfg.allowed_lateness * 1000)
        self.fn = load_handler(cfg.handler, self.base_dir)
        self.threads = Threads("natsflow-reduce")
        self.loaded = True  # for /readyz
        self.dlq_subject = b.dlq_subject(self.p.name, self.v.name)
        self.parts: list[Partition] = []
        timeout = self.p.spec.watermark.publisher_timeout
        for part in owned_partitions(b.partitions(self.p, self.v.name)):
            reader = b.BufferReader(self.nc, b.stream_name(self.p.name, self.v.name, part),
                                    b.consumer_name(self.p.name, self.v.name, part), self.limits.read_batch_size,
                                    ack_wait=self.limits.ack_wait)
            fetcher = WatermarkFetcher(self.kv, self.v.name, part or 0, timeout)
            await fetcher.start(wait_ready=5.0)
            # Asked before our first pull: every message pending an ack now was held by the
            # partition's previous owner, and will come back to us as a redelivery.
            info = await self.js.consumer_info(reader.stream, reader.consumer)
            await reader.start()
            self.parts.append(Partition(part, reader, fetcher, recovering=info.num_ack_pending))
            if info.num_ack_pending:
                log.info("reduce %s partition %s: waiting for %d redelivered inputs before closing windows",
                         self.v.name, part, info.num_ack_pending)
        log.info("reduce %s owns partitions %s", self.v.name, [p.index for p in self.parts])
        try:
            wait = self.limits.read_timeout / max(1, len(self.parts))
            while not self.stopping.is_set():
                for ps in self.parts:
                    msgs = await ps.reader.fetch(wait)
                    if msgs:
                        self.metrics.read.inc(len(msgs))
                        self.metrics.batch_size.observe(len(msgs))
                        await self._ingest(ps, msgs)
                    await self._close_ready(ps)
                await self._publish_watermark()
                self.check_stuck()
        finally:
            for ps in self.parts:
                # Unemitted windows: hand their inputs back now rather than after the ack wait.
                await ps.reader.nak([m for _, m in ps.refs.values()])
                await ps.reader.close()
                await ps.fetcher.close()

    def on_stop(self) -> None:
        for ps in getattr(self, "parts", []):
            ps.reader.interrupt()

    # ---- ingest --------------------------------------------------------------------------

    async def _ingest(self, ps: Partition, msgs: list[Msg]) -> None:
        late: list[tuple[Msg, Datum]] = []
        bad: list[tuple[Msg, str]] = []
        spec = self.cfg.window
        for m in msgs:
            seq = b.stream_sequence(m)
            ps.processed_seq = max(ps.processed_seq, seq)
            if ps.recovering and b.delivery_count(m) > 1:
                ps.recovering -= 1
            if seq in ps.refs:
                continue  # a redelivery of an input we already hold
            try:
                d = decode_datum(m)
            except (ValueError, TypeError) as exc:
                bad.append((m, f"bad envelope: {exc}"))
                continue
            keys = tuple(d.keys) if self.cfg.keyed else ()
            et = d.event_time_ms
            if spec.session is not None:
                timeout = int(spec.session.timeout * 1000)
                open_sessions = ps.sessions.get(keys, [])
                joins_open = any(s.start <= et + timeout and et <= s.end for s in open_sessions)
                if et + timeout + self.lateness <= ps.wm and not joins_open:
                    late.append((m, d))
                    continue
                add_to_sessions(ps.sessions.setdefault(keys, []), keys, et, timeout, (d, m))
                ps.refs[seq] = [1, m]
                continue
            wins = [(s, e) for s, e in assign(spec, et) if e + self.lateness > ps.wm]
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
                item = Outgoing(f"{self.v.name}:late:{b.origin(m)}", d.id, d.value, d.event_time_ms,
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
        if ps.recovering > 0:
            return
        ps.wm = ps.fetcher.compute(ps.processed_seq)
        if ps.wm == UNKNOWN:
            return
        ready = sorted((w for w in ps.open_windows() if w.end + self.lateness <= ps.wm), key=lambda w: w.end)
        if ready:
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
            done: list[Msg] = []
            for w in ready:
                self._forget(ps, w)
                for _, m in w.items:
                    seq = b.stream_sequence(m)
                    ref = ps.refs.get(seq)
                    if ref is not None:
                        ref[0] -= 1
                        if ref[0] == 0:
                            done.append(ps.refs.pop(seq)[1])
            await ps.reader.ack(done)
            self.metrics.ack.inc(len(done))

    async def _publish_watermark(self) -> None:
        """Every window still open ends after (lowest partition watermark - lateness), and so will
        every result emitted from now on; nothing is promised while a partition is unknown."""
        if self.router.wm is None or not self.parts:
            return
        if any(ps.recovering or ps.wm == UNKNOWN for ps in self.parts):
            return
        await self.router.wm.update(min(ps.wm for ps in self.parts) - self.lateness)

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
