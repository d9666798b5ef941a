"""A pynumaflow source transformer on a source (`source.transformer.numaflow`), in a real vertex
process: event times rewritten, keys and tags set, DROP honoured, an SDK error dead-lettered."""

from __future__ import annotations

from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import fill, program
from tests.framework.test_worker import out

BASE_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z


async def test_transformer_rewrites_event_time_and_drops(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    values = [str(i).encode() for i in range(300)] + [b"skip"] * 10 + [b"boom"]
    source = await fill(nc, runner, values)
    source["source"]["transformer"] = {"numaflow": {"command": program("event_time.py")}}
    runner.write([source, out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "o", "conditions": {"tags": {"values": ["stamped"]}}}])
    await runner.start_all()
    await sink.wait_count(300)
    dlq = f"nf_{runner.name}_in_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 30, "the dead letter of 'boom'")
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(int(m.data) for m in sink.msgs) == list(range(300))
    assert all(int(m.headers["Nf-Event-Time"]) == BASE_MS + 1000 * int(m.data) for m in sink.msgs)
    assert {m.headers["Nf-Keys"] for m in sink.msgs} == {'["t"]'}
    assert await runner.stream_messages(nc, dlq) == 1
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.in")
    assert msg.data == b"boom" and "ValueError(\"no event time in 'boom'\")" in msg.headers["Nf-Error"]
