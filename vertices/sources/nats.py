"""`nats`: core NATS subscription (optionally in a queue group), written in batches.

Core NATS has no redelivery, so this source is at-most-once up to the first buffer: a message
that arrives while the process dies is lost. Use `jetstream` for at-least-once intake.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from nats.aio.msg import Msg

from framework.isb.envelope import HDR_MSG_ID
from framework.connector import ConnectorContext, Emit, SourceRecord, record_from_msg
from framework.spec.model import NatsSource as Config

BATCH = 500
LINGER_S = 0.005


def record_from(msg: Msg) -> SourceRecord:
    offset = (msg.headers or {}).get(HDR_MSG_ID) or uuid.uuid4().hex  # the publisher's id dedups
    return record_from_msg(msg, offset, int(time.time() * 1000))


class NatsSource:
    def __init__(self, config: Config):
        self.cfg = config

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        nc = await ctx.connect(self.cfg.url)
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await nc.subscribe(self.cfg.subject, queue=self.cfg.queue or "", cb=on_msg)
        try:
            while not ctx.stopping.is_set():
                try:
                    first = await asyncio.wait_for(queue.get(), 0.5)
                except asyncio.TimeoutError:
                    continue
                batch = [first]
                deadline = time.monotonic() + LINGER_S
                while len(batch) < BATCH and time.monotonic() < deadline:
                    while not queue.empty() and len(batch) < BATCH:
                        batch.append(queue.get_nowait())
                    if len(batch) < BATCH:
                        await asyncio.sleep(0)
                await emit([record_from(m) for m in batch])
        finally:
            await sub.unsubscribe()
            while not queue.empty():  # received but not stored: write before exiting
                rest = [queue.get_nowait() for _ in range(min(BATCH, queue.qsize()))]
                await emit([record_from(m) for m in rest])
