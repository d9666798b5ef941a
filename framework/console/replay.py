"""`natsflow replay FILE --vertex V (--from-time T | --from-seq N) [--to-time T | --to-seq N]`:
re-feed a source's retained input (framework/isb/retained.py) into the pipeline.

Each message of the range is written into the source's out-edges as the source wrote it (same
routing, payload, keys, event time and user headers) with new ids, derived from the replay id and
the message's sequence in the retained stream (isb/names.replay_msg_id): buffer dedup does not
swallow them against the originals, and the same replay run again stores nothing twice. The data
id becomes `replay:<replay id>:<original data id>`, so a sink that writes idempotently by data id
writes the replayed copy too.

The replay id is `--replay-id`, else derived from the pipeline, vertex, first sequence and end
(`--to-time`, else the last sequence). Progress is kept per replay id in the KV bucket
nf_<pipeline>_replays (the next sequence to write, after every batch is stored): run with the
same id after a crash, a replay resumes there; run after it finished, it writes nothing. The
batch in flight at a crash is written again under the same ids, which the buffers drop as
duplicates within their 2-minute window.

A replay publishes no watermark: downstream, the replayed event times are behind the source's
watermark, so a reduce treats them as late data (`allowedLateness`, else its late edge, else
dropped and counted); maps and sinks do not look at watermarks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from framework.connector import record_from_msg
from framework.isb import names
from framework.isb.envelope import decode_datum, stream_sequence, stream_timestamp_ms
from framework.isb.reconcile import ensure_kv_bucket
from framework.isb.retained import Bound, ReplayError, Retained, read_range, retained_input, stream_range
from framework.isb.writer import BufferWriter, JetStreamPublisher
from framework.observability.metrics import VertexMetrics
from framework.runtime.deadletter import DeadLetters
from framework.runtime.routing import Outgoing, Router, describe
from framework.runtime.source import assign_event_times
from framework.spec import Pipeline, load_handler, load_pipeline
from framework.spec.secrets import resolved
from framework.spec.types import parse_duration
from framework.transport.settings import NatsSettings

DEFAULT_BATCH = 500
Resolver = Callable[[argparse.Namespace, Pipeline], tuple[NatsSettings, Any]]
Out = Callable[[str], None]


def parse_when(text: str, now_ms: int | None = None) -> int:
    """Epoch ms of an RFC 3339 time (`2026-11-30T20:00:00Z`) or of now minus a duration (`15m`)."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    try:
        return now - int(parse_duration(text) * 1000)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ReplayError(f"{text!r} is neither an RFC 3339 time (2026-11-30T20:00:00Z) nor a duration "
                          "before now (15m, 2h)") from None
    if stamp.tzinfo is None:
        raise ReplayError(f"{text!r} has no UTC offset: write it as RFC 3339, e.g. {text}Z")
    return int(stamp.timestamp() * 1000)


def default_replay_id(pipeline: str, vertex: str, first: int, end: int | str) -> str:
    """What `--replay-id` defaults to: the same for the same source, first sequence and end (the
    last sequence, or `--to-time` when given: input stored after it does not change the id)."""
    return hashlib.sha256(f"{pipeline}\x1f{vertex}\x1f{first}\x1f{end}".encode()).hexdigest()[:16]


def replay_data_id(replay_id: str, data_id: str) -> str:
    return f"replay:{replay_id}:{data_id}"


@dataclass(slots=True)
class Progress:
    """A replay's record in nf_<pipeline>_replays, written after every stored batch."""

    vertex: str
    first: int
    end: int
    next: int  # the first sequence not stored yet
    written: int = 0
    skipped: int = 0
    done: bool = False

    def encode(self) -> bytes:
        return json.dumps({k: getattr(self, k) for k in self.__slots__}).encode()  # type: ignore[attr-defined]

    @classmethod
    def decode(cls, raw: bytes) -> Progress:
        return cls(**json.loads(raw))


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    vertex: str
    start: Bound
    end: Bound | None
    replay_id: str | None = None
    dry_run: bool = False
    batch: int = DEFAULT_BATCH


class Replay:
    """One replay of a source's retained input into its out-edges."""

    def __init__(self, p: Pipeline, nc: Client, read_js: JetStreamContext, req: ReplayRequest, out: Out = print,
                 base_dir: Path | None = None):
        self.rid = ""
        self.p, self.nc, self.js, self.read_js, self.req, self.out = p, nc, nc.jetstream(), read_js, req, out
        self.retained: Retained = retained_input(p, req.vertex)
        source = p.vertex(req.vertex).source
        assert source is not None
        # The archive keeps event times after the source's extractor; a jetstream stream does not.
        self.event_time_fn = (load_handler(source.event_time.handler, base_dir)
                              if source.event_time is not None and not self.retained.archived else None)

    async def run(self) -> Progress:
        r, req = self.retained, self.req
        first, last = await stream_range(self.read_js, r)
        end = last if req.end is None or req.end.seq is None else min(req.end.seq, last)
        end_time = req.end.time_ms if req.end is not None else None
        if first > last or (req.start.seq is not None and req.start.seq > end):
            raise ReplayError(f"nothing to replay: stream {r.stream!r} holds {_held(first, last)}, "
                              f"the range asked for is {req.start} .. {req.end or 'now'}")
        progress: Progress | None = None
        kv: KeyValue | None = None
        router: Router | None = None
        dead_letters: DeadLetters | None = None
        publisher: JetStreamPublisher | None = None
        try:
            async for msgs in read_range(self.read_js, r, req.start, end, end_time, req.batch):
                if progress is None:
                    until = end if end_time is None else f"time:{end_time}"
                    rid = req.replay_id or default_replay_id(self.p.name, r.vertex, stream_sequence(msgs[0]), until)
                    if req.dry_run:
                        progress = Progress(r.vertex, stream_sequence(msgs[0]), end, stream_sequence(msgs[0]))
                    else:
                        kv = await self._bucket()
                        progress = await self._resume(kv, rid, stream_sequence(msgs[0]), end)
                        if progress.done:
                            self.out(f"replay {rid} of {r.vertex} already done ({progress.written} written): "
                                     "nothing more to write")
                            return progress
                        publisher = JetStreamPublisher(self.nc)
                        await publisher.start()
                        router = Router(self.p, r.vertex, BufferWriter(self.js, publisher), publisher)
                        dead_letters = DeadLetters(publisher, VertexMetrics(self.p.name, r.vertex), self.p.name,
                                                   r.vertex, asyncio.Event())
                    self.rid = rid
                    self.out(f"replay {rid}: source {r.vertex}, stream {r.stream}, sequences "
                             f"{progress.first}..{end}{' (dry run)' if req.dry_run else ''}")
                msgs = [m for m in msgs if stream_sequence(m) >= progress.next]
                if not msgs:
                    continue
                if router is None:
                    progress.written += len(msgs)
                else:
                    assert kv is not None and dead_letters is not None
                    await self._write(router, dead_letters, msgs, progress)
                    await kv.put(self.rid, progress.encode())
                progress.next = stream_sequence(msgs[-1]) + 1
                self.out(f"replay {self.rid}: {progress.written} written, up to seq {progress.next - 1} "
                         f"({progress.next - 1 - progress.first + 1} of {end - progress.first + 1})")
            if progress is None:
                raise ReplayError(f"nothing to replay: stream {r.stream!r} holds {_held(first, last)}, none of them "
                                  f"in {req.start} .. {req.end or 'now'}")
            if kv is not None:
                progress.done = True
                await kv.put(self.rid, progress.encode())
            return progress
        finally:
            if publisher is not None:
                await publisher.close()

    async def _bucket(self) -> KeyValue:
        bucket = names.replays_bucket(self.p.name)
        await ensure_kv_bucket(self.js, bucket, f"natsflow replay progress of pipeline {self.p.name}",
                               self.p.buffers_for(None))
        return await self.js.key_value(bucket)

    async def _resume(self, kv: KeyValue, rid: str, first: int, end: int) -> Progress:
        try:
            entry = await kv.get(rid)
        except KeyNotFoundError:
            return Progress(self.retained.vertex, first, end, first)
        assert entry.value is not None
        progress = Progress.decode(entry.value)
        if progress.vertex != self.retained.vertex:
            raise ReplayError(f"replay id {rid!r} was used for vertex {progress.vertex!r}, not "
                              f"{self.retained.vertex!r}: choose another --replay-id")
        if not progress.done:
            self.out(f"replay {rid}: resuming at seq {progress.next} ({progress.written} written before)")
        return progress

    def _outgoing(self, msgs: list[Msg]) -> tuple[list[tuple[Msg, Outgoing]], list[tuple[Msg, str]]]:
        """What the source wrote for each message, with the replay's ids; and why some cannot be."""
        rid, vertex = self.rid, self.retained.vertex
        items: list[tuple[Msg, Outgoing]] = []
        bad: list[tuple[Msg, str]] = []
        if self.retained.archived:
            for m in msgs:
                try:
                    d = decode_datum(m)
                except ValueError as exc:
                    bad.append((m, f"archived message {stream_sequence(m)}: {exc}"))
                    continue
                items.append((m, Outgoing(names.replay_msg_id(rid, vertex, stream_sequence(m)),
                                          replay_data_id(rid, d.id), d.value, d.event_time_ms, d.keys,
                                          dict(d.headers) or None, frozenset())))
        else:
            stream = self.retained.stream
            records = [record_from_msg(m, f"{stream}:{stream_sequence(m)}", stream_timestamp_ms(m)) for m in msgs]
            if self.event_time_fn is not None:
                assign_event_times(self.event_time_fn, records, vertex)
            items = [(m, Outgoing(names.replay_msg_id(rid, vertex, stream_sequence(m)),
                                  replay_data_id(rid, rec.id or rec.offset), rec.value, rec.event_time_ms, rec.keys,
                                  rec.headers, frozenset())) for m, rec in zip(msgs, records)]
        return items, bad

    async def _write(self, router: Router, dead_letters: DeadLetters, msgs: list[Msg], progress: Progress) -> None:
        """Write the batch; a message that cannot be written goes to the source's dead-letter
        stream with why (`Nf-Error`), is counted as skipped, and the replay goes on."""
        items, bad = self._outgoing(msgs)
        ok = []
        for m, item in items:
            problem = router.prepare(item)
            if problem is None:
                ok.append(item)
            else:
                bad.append((m, describe(f"message {stream_sequence(m)}", problem)))
        for _, why in bad:
            self.out(f"replay {self.rid}: skipped {why} (to the dead-letter stream)")
        await dead_letters.inputs(bad)
        report = await router.write(ok)
        progress.written += len(ok) - report.unrouted
        progress.skipped += len(bad)


def _held(first: int, last: int) -> str:
    return "no messages" if first > last else f"sequences {first}..{last}"


def _bound(seq: int | None, when: str | None) -> Bound | None:
    if seq is not None:
        return Bound(seq=seq)
    return Bound(time_ms=parse_when(when)) if when is not None else None


async def cmd_replay(args: argparse.Namespace, resolve: Resolver) -> int:
    p = load_pipeline(args.file, check_handlers=False, allow_unset=True)
    start = _bound(args.from_seq, args.from_time)
    assert start is not None  # argparse requires one of them
    req = ReplayRequest(args.vertex, start, _bound(args.to_seq, args.to_time), args.replay_id, args.dry_run,
                        args.batch)
    retained = retained_input(p, req.vertex)  # refuse a non-source before connecting
    settings, _ = resolve(args, p)
    nc = await settings.connect(f"natsflow-{p.name}-replay")
    read_nc = nc
    try:
        if not retained.archived:  # a jetstream source may read another server's stream
            source = p.vertex(req.vertex).source
            assert source is not None
            url = resolved(source.config, f"vertices.{req.vertex}.source.jetstream").url
            if url is not None and url != settings.url:
                read_nc = await settings.with_url(url).connect(f"natsflow-{p.name}-replay-read")
        started = time.monotonic()
        progress = await Replay(p, nc, read_nc.jetstream(), req, out=lambda s: print(s, flush=True),
                                  base_dir=Path(args.file).parent).run()
    finally:
        if read_nc is not nc:
            await read_nc.close()
        await nc.close()
    verb = "would write" if req.dry_run else "wrote"
    print(f"replay of {req.vertex}: {verb} {progress.written} message(s), skipped {progress.skipped}, "
          f"sequences {progress.first}..{progress.next - 1}, in {time.monotonic() - started:.2f}s")
    return 0


def add_parser(sub: Any, file_arg: Callable[[argparse.ArgumentParser], None],
               running_flags: Callable[[argparse.ArgumentParser], None], resolve: Resolver) -> None:
    p = sub.add_parser("replay", help="re-feed a source's retained input (its archive, or a jetstream source's "
                                      "stream) into the pipeline, with new ids")
    file_arg(p)
    p.add_argument("--vertex", required=True, help="the source vertex whose input to replay")
    start = p.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-time", metavar="T", help="RFC 3339 time, or a duration before now (15m)")
    start.add_argument("--from-seq", type=int, metavar="N", help="first sequence of the retained stream")
    end = p.add_mutually_exclusive_group()
    end.add_argument("--to-time", metavar="T", help="last store time to replay (default: now)")
    end.add_argument("--to-seq", type=int, metavar="N", help="last sequence to replay (default: the last now)")
    p.add_argument("--replay-id", help="names this replay: run again with it after a crash to resume, after it "
                                       "finished to write nothing (default: derived from the sequence range)")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"messages per write (default {DEFAULT_BATCH})")
    p.add_argument("--dry-run", action="store_true", help="count what would be replayed, write nothing")
    running_flags(p)
    p.set_defaults(func=lambda a: cmd_replay(a, resolve))
