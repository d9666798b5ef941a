"""`redisStreams`: reads a Redis stream through a consumer group (XREADGROUP) and XACKs each batch
only after it is stored in the first buffer.

Mapping of an entry: the field `valueField` (default `value`) is the payload and every other field
becomes a header (`Nats-*`, `Nf-*` and names that cannot be NATS header names are left out); an entry without that
field is stored whole, as a JSON object of its fields. The field `keyField` (default `key`), when
present, is the message key. Event time is the millisecond part of the entry id. The offset (and
data id) is `<stream>:<entry id>`, so an entry read again after a crash is deduplicated.

Recovery: a restarted consumer first re-reads its own pending entries (id `0`), then new ones
(`>`). Entries another consumer left unacked for `claimIdle` are taken over (XAUTOCLAIM), so a
replica that never comes back (a new pod name) strands nothing. A stream or group deleted while the
source runs is created again at `startId`. The group's `lag` (not yet read)
and `pending` (read, not acked) are exported as `source_upstream_backlog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import time

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from framework.connector import ConnectorContext, Emit, SourceRecord, is_natsflow_header
from vertices.redis.config import RedisStreamsConfig as Config

log = logging.getLogger("natsflow.redis_streams")

BATCH = 500
BLOCK_MS = 1000
BACKLOG_EVERY_S = 2.0
HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # printable ASCII without ':' or space

Entry = tuple[bytes, dict[bytes, bytes] | None]


class RedisStreamsSource:
    def __init__(self, config: Config):
        self.cfg = config
        self.consumer = config.consumer or os.environ.get("NATSFLOW_REPLICA_ID") or socket.gethostname()

    def record(self, entry_id: bytes, fields: dict[bytes, bytes]) -> SourceRecord:
        eid = entry_id.decode()
        offset = f"{self.cfg.stream}:{eid}"
        value_field = self.cfg.value_field.encode()
        key_field = self.cfg.key_field.encode() if self.cfg.key_field else None
        keys = [fields[key_field].decode("utf-8", "replace")] if key_field in fields else None
        headers = None
        if value_field in fields:
            value = fields[value_field]
            headers = {k.decode("utf-8", "replace"): v.decode("utf-8", "replace").replace("\r", " ").replace("\n", " ")
                       for k, v in fields.items() if k not in (value_field, key_field)}
            # natsflow's own envelope headers are set from the entry itself, never from a field
            headers = {k: v for k, v in headers.items()
                       if HEADER_NAME.match(k) and not is_natsflow_header(k)} or None
        else:
            value = json.dumps({k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                                for k, v in fields.items()}, separators=(",", ":")).encode()
        return SourceRecord(value, offset, int(eid.split("-", 1)[0]), keys, headers, offset)

    async def store(self, r: aioredis.Redis, emit: Emit, entries: list[Entry]) -> None:
        """Store, then acknowledge: a crash in between re-reads the entries, and their ids dedup."""
        if not entries:
            return
        # An entry deleted (XDEL) while pending comes back without fields: nothing to store.
        records = [self.record(eid, fields) for eid, fields in entries if fields]
        if records:
            await emit(records)
        await r.xack(self.cfg.stream, self.cfg.group, *[eid for eid, _ in entries])

    async def ensure_group(self, r: aioredis.Redis) -> None:
        try:
            await r.xgroup_create(self.cfg.stream, self.cfg.group, id=self.cfg.start_id, mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read(self, r: aioredis.Redis, start: str, block: int | None) -> list[Entry]:
        resp = await r.xreadgroup(self.cfg.group, self.consumer, {self.cfg.stream: start}, count=BATCH, block=block)
        return list(resp[0][1]) if resp else []

    async def own_pending(self, r: aioredis.Redis, ctx: ConnectorContext, emit: Emit) -> None:
        """Entries this consumer read before a crash but never acknowledged."""
        last = "0"
        while not ctx.stopping.is_set():
            entries = await self.read(r, last, None)
            if not entries:
                return
            await self.store(r, emit, entries)
            last = entries[-1][0].decode()

    async def claim_idle(self, r: aioredis.Redis, emit: Emit) -> None:
        start = "0-0"
        min_idle = int(self.cfg.claim_idle * 1000)
        while True:
            resp = await r.xautoclaim(self.cfg.stream, self.cfg.group, self.consumer, min_idle,
                                      start_id=start, count=BATCH)
            start, entries = resp[0], resp[1]
            if entries:
                log.info("redis stream %s: took over %d entries idle for %.0fs", self.cfg.stream,
                         len(entries), self.cfg.claim_idle)
            await self.store(r, emit, list(entries))
            if start in (b"0-0", "0-0"):
                return

    async def report_backlog(self, r: aioredis.Redis, ctx: ConnectorContext) -> None:
        metrics = ctx.metrics
        if metrics is None:
            return
        for g in await r.xinfo_groups(self.cfg.stream):
            name = g.get("name")
            if (name.decode() if isinstance(name, bytes) else name) != self.cfg.group:
                continue
            metrics.upstream_backlog("pending", int(g.get("pending") or 0))
            if g.get("lag") is not None:  # Redis 7+; unknown after deletions
                metrics.upstream_backlog("lag", int(g["lag"]))

    async def backlog_loop(self, r: aioredis.Redis, ctx: ConnectorContext) -> None:
        """Its own task, so the backlog is still reported while `emit` waits on a full buffer."""
        while not ctx.stopping.is_set():
            try:
                await self.report_backlog(r, ctx)
            except (RedisConnectionError, RedisTimeoutError, ResponseError) as exc:
                log.debug("redis stream %s: no backlog reading (%s)", self.cfg.stream, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), BACKLOG_EVERY_S)

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        r = aioredis.from_url(self.cfg.url)
        reporter: asyncio.Task | None = None
        try:
            await self.ensure_group(r)
            reporter = asyncio.create_task(self.backlog_loop(r, ctx))
            recover = True
            next_claim = 0.0
            while not ctx.stopping.is_set():
                try:
                    if recover:
                        await self.own_pending(r, ctx, emit)
                        recover = False
                    now = time.monotonic()
                    if now >= next_claim:
                        await self.claim_idle(r, emit)
                        next_claim = now + self.cfg.claim_idle / 2
                    await self.store(r, emit, await self.read(r, ">", BLOCK_MS))
                except (RedisConnectionError, RedisTimeoutError) as exc:
                    # Unacked entries stay pending in the group and are re-read once Redis is back.
                    log.warning("redis stream %s: %s: %s; retrying in 1s", self.cfg.stream, type(exc).__name__, exc)
                    recover = True
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(ctx.stopping.wait(), 1.0)
                except ResponseError as exc:
                    if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                        raise
                    # The stream (or its group) was deleted: make them again at startId and go on.
                    log.warning("redis stream %s: group %s is gone (%s); creating it again", self.cfg.stream,
                                self.cfg.group, exc)
                    await self.ensure_group(r)
                    recover = True
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
            await r.aclose()
