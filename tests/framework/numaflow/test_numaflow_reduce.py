"""A keyed fixed-window reduce written with pynumaflow's Reducer, run by natsflow's reduce vertex
through a real nats-server: exact per-key sums, also across a SIGKILL mid-window."""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import program
from tests.framework.test_reduce import T0, consumed, owners_are, publish, results, source_stream
from tests.vertices.test_numaflow_source import programs_of

pytest.importorskip("pynumaflow")

PROGRAM = program("reduce_sum.py")


def numaflow_reduce_pipeline(runner, partitions: int = 1) -> None:
    vertices = [
        {"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "agg", "udf": {"numaflow": {"command": PROGRAM, "startupTimeout": "60s",
                                             "reduce": {"window": {"fixed": {"length": "10s"}},
                                                        "partitions": partitions}}}},
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
    runner.kill("agg")
    await wait_for(lambda: not programs_of(runner.name, PROGRAM[1]), 10, "the program to die with its vertex")
    runner.start("agg")
    await publish(js, subj, [("zz", 1000, 0)])
    await out.wait_count(5, timeout=120)  # [10,20) of a and b, [10,20) of zz
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    got = {r for r in results(out) if r[0] != ("zz",)}
    assert got == expected_sums(keys, 2)
    assert len(out.msgs) == 5, "a window result was emitted twice"


async def test_sigkill_of_the_reducer_program_mid_window_is_survived_with_exact_sums(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    numaflow_reduce_pipeline(runner)
    await runner.start_all()
    subj = f"{runner.name}.src"
    keys = ("a", "b")
    await publish(js, subj, [(k, t, t * (i + 1)) for t in range(20) for i, k in enumerate(keys)])
    await consumed(nc, runner)
    await publish(js, subj, [("zz", 15, 0)])
    await out.wait_count(2, timeout=90)
    [pid] = programs_of(runner.name, PROGRAM[1])
    os.kill(pid, signal.SIGKILL)  # the vertex holds [10,20)'s inputs; it sends them to a new program
    await publish(js, subj, [("zz", 1000, 0)])
    await out.wait_count(5, timeout=120)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    got = {r for r in results(out) if r[0] != ("zz",)}
    assert got == expected_sums(keys, 2)
    assert len(out.msgs) == 5
    assert "starting it again (restart 1)" in runner.log("agg")
    assert runner.procs["agg"].poll() is None
    assert await runner.stream_messages(nc, f"nf_{runner.name}_agg_dlq") == 0


async def test_pynumaflow_reduce_streamer_results_and_an_sdk_error_as_dead_letters(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    vertices = [
        {"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "agg", "udf": {"numaflow": {"command": program("reduce_stream_count.py"),
                                             "reduce": {"window": {"fixed": {"length": "10s"}}}},
                                "retry": {"attempts": 1}}},
        {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}},
    ]
    runner.write(vertices, [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}])
    await runner.start_all()
    events = [("a", t, b"x") for t in range(10)] + [("b", t, b"x") for t in range(6)]
    events += [("bad", 1, b"x"), ("bad", 2, b"boom"), ("bad", 3, b"x")]
    for phase in (events, [("zz", 100, b"x")]):  # then the watermark passes [0,10)
        for key, t, value in phase:
            await js.publish(f"{runner.name}.src", value,
                             headers={"Nf-Event-Time": str((T0 + t) * 1000), "Nf-Keys": json.dumps([key])})
        await consumed(nc, runner)
    await out.wait_count(5, timeout=90)
    dlq = f"nf_{runner.name}_agg_dlq"
    await wait_for(lambda: _count(nc, runner, dlq, 3), 60, "the failed window's 3 inputs as dead letters")
    got = sorted((json.loads(m.headers["Nf-Keys"])[0], m.data.decode()) for m in out.msgs)
    assert got == [("a", "final:10"), ("a", "partial:4"), ("a", "partial:8"), ("b", "final:6"), ("b", "partial:4")]
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.agg")
    assert "UDF_EXECUTION_ERROR" in msg.headers["Nf-Error"]
    assert "cannot count b'boom' for ['bad']" in msg.headers["Nf-Error"]
    assert runner.procs["agg"].poll() is None  # the vertex kept going (its program was started again)
    assert len(out.msgs) == 5


async def _count(nc, runner, stream: str, n: int) -> bool:
    try:
        return await runner.stream_messages(nc, stream) == n
    except Exception:
        return False


async def test_two_replicas_each_with_its_reducer_program_split_the_partitions(runner, nc):
    keys = tuple(f"k{i}" for i in range(6))
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    numaflow_reduce_pipeline(runner, partitions=4)
    await runner.provision()
    for v in ("out", "in"):
        runner.start(v)
    for r in ("0", "1"):
        runner.start("agg", replica=r, NATSFLOW_REPLICA_ID=f"r{r}")
    await wait_for(lambda: owners_are(nc, runner, {"r0": 2, "r1": 2}, 4), 60, "two partitions per replica")
    await publish(js, f"{runner.name}.src", [(k, t, t * (i + 1)) for t in range(20) for i, k in enumerate(keys)])
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("zz", 1000, 0)])
    await out.wait_count(12, timeout=90)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    assert results(out) == expected_sums(keys, 2) and len(out.msgs) == 12
    assert len(programs_of(runner.name, PROGRAM[1])) == 2  # one program per replica
    for r in ("0", "1"):  # both replicas reduced part of the keys
        assert await runner.terminate(f"agg#{r}") == 0
        stats = json.loads(runner.log(f"agg#{r}").rsplit("stats ", 1)[1].splitlines()[0])
        assert stats["forwarder_read_total"] > 0
    assert programs_of(runner.name, PROGRAM[1]) == []
