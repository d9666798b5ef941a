"""A keyed fixed-window reduce written with pynumaflow's Reducer, run by natsflow's reduce vertex
through a real nats-server: exact per-key sums, also across a SIGKILL mid-window."""

from __future__ import annotations

import sys

import pytest

from tests.conftest import REPO, Collector, wait_for
from tests.framework.test_reduce import T0, consumed, publish, results, source_stream

pytest.importorskip("pynumaflow")

PROGRAM = [sys.executable, str(REPO / "tests" / "numaflow_udfs" / "reduce_sum.py")]


def numaflow_reduce_pipeline(runner) -> None:
    vertices = [
        {"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "agg", "udf": {"numaflow": {"command": PROGRAM, "startupTimeout": "60s",
                                             "reduce": {"window": {"fixed": {"length": "10s"}}}}}},
        {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}},
    ]
    runner.write(vertices, [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}])


def expected_sums(keys: tuple[str, ...], windows: int) -> set[tuple]:
    return {((k,), s, s + 10, 10, sum(range(s, s + 10)) * (i + 1)) for i, k in enumerate(keys)
            for s in range(0, windows * 10, 10)}


async def test_pynumaflow_reducer_keyed_fixed_windows_exact_sums(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    numaflow_reduce_pipeline(runner)
    await runner.start_all()
    keys = ("a", "b", "c")
    # key i contributes (i+1)*t at second t, for t in [0, 40): 4 windows per key
    await publish(js, f"{runner.name}.src", [(k, t, t * (i + 1)) for t in range(40) for i, k in enumerate(keys)])
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("zz", 1000, 0)])  # the watermark passes every window
    await out.wait_count(12, timeout=90)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    got = results(out)
    assert len(out.msgs) == 12, "duplicate window results"
    assert got == expected_sums(keys, 4)
    first = next(m for m in out.msgs if m.data and b'"start": %d' % T0 in m.data)
    assert int(first.headers["Nf-Event-Time"]) == (T0 + 10) * 1000  # a result's event time: the window end


async def test_sigkill_of_the_reduce_vertex_mid_window_loses_and_duplicates_nothing(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    numaflow_reduce_pipeline(runner)
    await runner.start_all()
    subj = f"{runner.name}.src"
    keys = ("a", "b")
    await publish(js, subj, [(k, t, t * (i + 1)) for t in range(20) for i, k in enumerate(keys)])
    await consumed(nc, runner)
    await publish(js, subj, [("zz", 15, 0)])  # closes [0,10) only; [10,20) stays open, its inputs held
    await out.wait_count(2, timeout=90)
    runner.kill("agg")  # the natsflow process and, with its process group, the pynumaflow program
    runner.start("agg")
    await publish(js, subj, [("zz", 1000, 0)])
    await out.wait_count(5, timeout=120)  # [10,20) of a and b, [10,20) of zz
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    got = {r for r in results(out) if r[0] != ("zz",)}
    assert got == expected_sums(keys, 2)
    assert len(out.msgs) == 5, "a window result was emitted twice"
