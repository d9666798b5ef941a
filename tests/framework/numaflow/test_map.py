"""A pynumaflow map, flatmap, batch map and map stream program as a natsflow vertex, every vertex
its own process, against the session's nats-server: exact counts, tags, DROP, SDK errors."""

from __future__ import annotations

from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import fill, numaflow_map
from tests.framework.test_worker import out


async def test_map_even_odd_tags_route_and_drop(runner, nc):
    even = await Collector().start(nc, f"{runner.name}.even")
    odd = await Collector().start(nc, f"{runner.name}.odd")
    values = [str(i).encode() for i in range(500)] + [b"not-a-number"] * 20
    source = await fill(nc, runner, values)
    runner.write([source, numaflow_map("eo", "even_odd.py"), out("even", f"{runner.name}.even"),
                  out("odd", f"{runner.name}.odd")],
                 [{"from": "in", "to": "eo"},
                  {"from": "eo", "to": "even", "conditions": {"tags": {"values": ["even-tag"]}}},
                  {"from": "eo", "to": "odd", "conditions": {"tags": {"values": ["odd-tag"]}}}])
    await runner.start_all()
    await even.wait_count(250)
    await odd.wait_count(250)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(int(m.data) for m in even.msgs) == list(range(0, 500, 2))
    assert sorted(int(m.data) for m in odd.msgs) == list(range(1, 500, 2))
    assert {m.headers["Nf-Keys"] for m in even.msgs} == {'["even"]'}
    assert {m.headers["Nf-Keys"] for m in odd.msgs} == {'["odd"]'}
    assert await runner.terminate("eo") == 0
    assert "forwarder_drop_total[drop_tag]\": 20" in runner.log("eo")
