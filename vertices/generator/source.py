"""`generator`: synthetic data at `rpu` messages per `duration`, for demos, load and tests."""

from __future__ import annotations

import asyncio
import json
import os
import time

from framework.connector import ConnectorContext, Emit, SourceRecord
from vertices.generator.config import GeneratorConfig as Config

CHUNK = 500


class GeneratorSource:
    def __init__(self, config: Config):
        self.cfg = config
        # A restarted generator makes new data, so its ids must not collide with the last run's.
        self.run_id = f"{int(time.time() * 1000):x}{os.getpid():x}"

    def payload(self, n: int, now_ms: int) -> bytes:
        doc: dict = {"id": f"{self.run_id}-{n}", "seq": n, "createdTs": now_ms}
        if self.cfg.value is not None:
            doc["value"] = self.cfg.value
        raw = json.dumps(doc, separators=(",", ":"))
        pad = self.cfg.msg_size - len(raw) - len(',"pad":""')
        if pad > 0:
            raw = raw[:-1] + ',"pad":"' + "x" * pad + '"}'
        return raw.encode()

    def records(self, start: int, count: int) -> list[SourceRecord]:
        now_ms = int(time.time() * 1000)
        kc = self.cfg.key_count
        out = []
        for n in range(start, start + count):
            offset = f"{self.run_id}-{n}"
            out.append(SourceRecord(self.payload(n, now_ms), offset, now_ms,
                                    [f"key-{n % kc}"] if kc else None, None, offset))
        return out

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        cfg = self.cfg
        total = cfg.total
        n = 0
        period_end = time.monotonic()
        while not ctx.stopping.is_set() and (total is None or n < total):
            # A fixed timeline: oversleeping one period does not lower the long-run rate.
            period_end = max(period_end + cfg.duration, time.monotonic() - cfg.duration)
            sent = 0
            if ctx.running is not None and not ctx.running.is_set():
                await ctx.until_running()  # paused: generate nothing; the timeline restarts on resume
                period_end = time.monotonic() + cfg.duration
            while sent < cfg.rpu and not ctx.stopping.is_set():
                k = min(CHUNK, cfg.rpu - sent, (total - n) if total is not None else CHUNK)
                if k <= 0:
                    break
                await emit(self.records(n, k))
                n += k
                sent += k
            remaining = period_end - time.monotonic()
            if remaining > 0:
                try:
                    await asyncio.wait_for(ctx.stopping.wait(), remaining)
                except TimeoutError:
                    pass
        await ctx.stopping.wait()  # a finished generator idles until told to stop
