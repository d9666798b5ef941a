"""Watermarks on behalf of a vertex program in another language (`udf.command` / `udf.container`).

Such a program writes its outputs but need not publish watermarks (docs/protocol.md §9 is a
SHOULD), and without them a reduce downstream of it would never close a window. This proxy
publishes them from what JetStream already shows, without looking inside the program:

1. read the program's input consumer: every input up to its ack floor is processed, and (the
   protocol's ack rule) every output of those inputs was stored before the ack;
2. then read each out-buffer's last sequence: all those outputs lie at or below it;
3. publish, per out-buffer, the input watermark at the ack floor with that sequence.

The promise holds because later outputs come from inputs above the floor, whose event times the
input watermark bounds (outputs keep their input's event time, as maps do). Reading the floor
before the sequences makes the published sequence an upper bound, which only makes readers wait
a little longer. Run by `natsflow run/up` for every program vertex with out-edges, and as a
sidecar container of its rendered Deployment: `natsflow watermark-proxy --pipeline F --vertex V`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from nats.aio.client import Client

from framework.isb import names
from framework.spec import Pipeline, load_pipeline
from framework.transport.settings import NatsSettings
from framework.watermark.fetcher import WatermarkFetcher
from framework.watermark.marks import HEARTBEAT_S, bucket_name, provision_bucket
from framework.watermark.publisher import WatermarkPublisher

log = logging.getLogger("natsflow.watermark_proxy")

PROXY_REPLICA = "proxy"


def needs_proxy(p: Pipeline, vertex: str) -> bool:
    v = p.vertex(vertex)
    return v.udf is not None and v.udf.is_program and bool(p.out_edges(vertex))


class WatermarkProxy:
    def __init__(self, nc: Client, p: Pipeline, vertex: str, interval: float = HEARTBEAT_S / 2):
        self.nc, self.p, self.vertex, self.interval = nc, p, vertex, interval
        self.js = nc.jetstream()
        # (vertex, partition) as the KV keys name it -> that buffer's stream
        self.buffers = {(e.to, part or 0): names.stream_name(p.name, e.to, part)
                        for e in p.out_edges(vertex) for part in p.partitions(e.to)}
        self.targets = list(self.buffers)

    async def run(self, stopping: asyncio.Event) -> None:
        await provision_bucket(self.js, self.p.name, self.p.buffers_for(None))
        kv = await self.js.key_value(bucket_name(self.p.name))
        fetcher = WatermarkFetcher(kv, self.vertex, 0, self.p.spec.watermark.publisher_timeout)
        await fetcher.start(wait_ready=5.0)
        # The replica id names the proxy, so the KV shows who speaks for the program.
        publisher = WatermarkPublisher(kv, self.vertex, self.targets, replica=PROXY_REPLICA)
        log.info("watermark proxy for %s started: publishing for %s", self.vertex,
                 ", ".join(f"{to}.{part}" for to, part in self.targets))
        try:
            while not stopping.is_set():
                await self.step(fetcher, publisher)
                try:
                    await asyncio.wait_for(stopping.wait(), self.interval)
                except TimeoutError:
                    pass
        finally:
            await fetcher.close()
            await publisher.close()

    async def step(self, fetcher: WatermarkFetcher, publisher: WatermarkPublisher) -> None:
        try:
            info = await self.js.consumer_info(names.stream_name(self.p.name, self.vertex),
                                               names.consumer_name(self.p.name, self.vertex))
            floor = info.ack_floor.stream_seq  # first: see the module docstring
            for target, stream in self.buffers.items():
                publisher.wrote(target, (await self.js.stream_info(stream)).state.last_seq)
        except Exception as exc:
            log.warning("watermark proxy for %s: %s", self.vertex, exc)
            return
        await publisher.update(fetcher.compute(floor), force=True)


async def run_proxy(pipeline_file: str | Path, vertex: str, settings: NatsSettings) -> None:
    p = load_pipeline(pipeline_file, check_handlers=False)
    if not needs_proxy(p, vertex):
        raise SystemExit(f"vertex {vertex!r} is not a program vertex with out-edges: it needs no watermark proxy")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    nc = await settings.connect(f"natsflow-{p.name}-{vertex}-wmproxy", stopping=stopping)
    try:
        await WatermarkProxy(nc, p, vertex).run(stopping)
    finally:
        with contextlib.suppress(Exception):  # reconnecting: nothing to drain, stop anyway
            await asyncio.wait_for(nc.drain(), 10)
