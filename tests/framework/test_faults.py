"""Faults of the server itself: the session's private nats-server is killed and restarted."""

from __future__ import annotations

import json

import nats

from framework.embedded import EmbeddedNats
from tests.conftest import wait_for
from tests.framework.test_worker import gen, udf


async def test_nats_server_crash_mid_stream_loses_nothing(runner, nc, nats_server: EmbeddedNats):
    total = 20_000
    out_stream = f"OUT_{runner.name}"
    runner.write([gen("in", total, rpu=2000, duration="250ms"), udf("map", "identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"ackWait": "3s"})
    await runner.start_all()
    js = nc.jetstream()

    async def stored(n: int) -> bool:
        try:
            return (await js.stream_info(out_stream)).state.messages >= n
        except Exception:  # the stream does not exist yet, or the server is restarting
            return False

    await wait_for(lambda: stored(3000), 60, "3000 messages at the sink")
    nats_server.kill()
    nats_server.start()
    await wait_for(lambda: stored(total), 120, f"{total} messages at the sink after the restart")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    info = await js.stream_info(out_stream)
    assert info.state.messages == total
    fresh = await nats.connect(nats_server.url)
    try:
        psub = await fresh.jetstream().pull_subscribe(f"{runner.name}.done", durable=None, stream=out_stream)
        seqs = []
        while len(seqs) < total:
            for m in await psub.fetch(1000, timeout=5):
                seqs.append(json.loads(m.data)["seq"])
                await m.ack()  # the consumer stops at 1000 unacked
    finally:
        await fresh.close()
    assert sorted(seqs) == list(range(total))
    for v in ("in", "map", "out"):
        assert runner.procs[v].poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"
