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


async def test_flatmap_gives_every_part_once(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    values = [",".join(f"{i}.{j}" for j in range(i % 4)).encode() for i in range(300)]  # 0 to 3 parts
    expected = sorted(f"{i}.{j}" for i in range(300) for j in range(i % 4)) + [""] * 75  # "" splits to [""]
    source = await fill(nc, runner, values, keys=True)
    runner.write([source, numaflow_map("flat", "flatmap.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "flat"}, {"from": "flat", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(len(expected))
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(m.data.decode() for m in sink.msgs) == sorted(expected)
    assert len({m.headers["Nats-Msg-Id"] for m in sink.msgs}) == len(expected)
    assert {m.headers["Nf-Keys"] for m in sink.msgs} == {'["k0"]', '["k1"]', '["k2"]'}


async def test_batch_map_upper_cases_in_batches(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    source = await fill(nc, runner, [f"v{i}".encode() for i in range(1000)], keys=True)
    runner.write([source, numaflow_map("bm", "batch_upper.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "bm"}, {"from": "bm", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(1000)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(m.data.decode() for m in sink.msgs) == sorted(f"V{i}" for i in range(1000))
    assert len({m.headers["Nf-Id"] for m in sink.msgs}) == 1000
    assert {m.headers["Nf-Keys"] for m in sink.msgs} == {'["k0"]', '["k1"]', '["k2"]'}


async def test_map_stream_streams_each_output_once(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    source = await fill(nc, runner, [f"w{i}:{i % 5}".encode() for i in range(200)])
    expected = sorted(f"w{i}-{j}" for i in range(200) for j in range(i % 5))
    runner.write([source, numaflow_map("ms", "repeat_stream.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "ms"}, {"from": "ms", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(len(expected))
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(m.data.decode() for m in sink.msgs) == expected
