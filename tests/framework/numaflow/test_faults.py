"""Faults of a Numaflow program vertex: the user's code raising (a dead letter with the SDK's
text, the vertex keeps going) and the program killed mid-stream (the vertex exits non-zero; once
restarted nothing is lost or duplicated)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import fill, numaflow_map
from tests.framework.test_worker import out


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the vertex's UDF program)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("script", "error"), [
    ("even_odd.py", "ValueError(\"cannot map 'boom'\")"),
    ("batch_upper.py", "RuntimeError(\"batch cannot take 'boom'\")"),
])
async def test_sdk_exception_is_a_dead_letter_with_its_text(runner, nc, script, error):
    sink = await Collector().start(nc, f"{runner.name}.o")
    values = [str(2 * i).encode() for i in range(300)]
    values[100] = values[200] = b"boom"
    source = await fill(nc, runner, values)
    runner.write([source, numaflow_map("m", script, retry={"attempts": 1}), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}])
    await runner.start_all()
    dlq = f"nf_{runner.name}_m_dlq"
    await sink.wait_count(298, timeout=90)
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    assert await runner.stream_messages(nc, dlq) == 2
    assert sorted(m.data for m in sink.msgs) == sorted(v.upper() for v in values if v != b"boom")
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.m")
    assert msg.data == b"boom"
    assert "UDF_EXECUTION_ERROR" in msg.headers["Nf-Error"] and error in msg.headers["Nf-Error"]
    assert runner.procs["m"].poll() is None  # the vertex kept going


async def test_map_stream_exception_is_a_dead_letter_and_the_rest_streams_once(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    values = [f"w{i}:{i % 4}".encode() for i in range(200)]
    values[50] = b"boom"
    expected = sorted([f"w{i}-{j}" for i in range(200) if i != 50 for j in range(i % 4)] + ["boom-0"])
    source = await fill(nc, runner, values)
    runner.write([source, numaflow_map("m", "repeat_stream.py", retry={"attempts": 1}), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(len(expected), timeout=90)
    dlq = f"nf_{runner.name}_m_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 60, "the dead letter")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    # "boom-0" was streamed before the error: written once (its id is fixed), then the input dead-lettered
    assert sorted(m.data.decode() for m in sink.msgs) == expected
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.m")
    assert msg.data == b"boom" and "ValueError(\"the stream of 'boom' broke\")" in msg.headers["Nf-Error"]


async def test_a_call_over_udf_timeout_dead_letters_only_the_input_that_hangs(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    values = [str(i).encode() for i in range(200)]
    values[120] = b"hang"
    source = await fill(nc, runner, values)
    runner.write([source, numaflow_map("m", "slow_copy.py", timeout="2s", retry={"attempts": 1}),
                  out("o", f"{runner.name}.o")], [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}])
    await runner.start_all()
    await sink.wait_count(199, timeout=120)
    dlq = f"nf_{runner.name}_m_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 60, "the dead letter")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    assert sorted(m.data for m in sink.msgs) == sorted(v for v in values if v != b"hang")
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.m")
    assert msg.data == b"hang" and msg.headers["Nf-Error"] == "HandlerTimeout: handler did not return within 2s"
    assert runner.procs["m"].poll() is None


async def test_program_killed_mid_stream_loses_and_duplicates_nothing(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    total = 3000
    source = await fill(nc, runner, [str(i).encode() for i in range(total)])
    runner.write([source, numaflow_map("m", "slow_copy.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}], limits={"readBatchSize": 50})
    await runner.start_all()
    await sink.wait_count(300, timeout=90)
    vertex = runner.procs["m"]
    programs = await wait_for(lambda: children(vertex.pid), 10, "the vertex's UDF program")
    for pid in programs:
        os.kill(pid, 9)
    await wait_for(lambda: vertex.poll() is not None, 60, "the vertex to exit after its program died")
    assert vertex.returncode != 0
    assert "was killed by signal 9" in runner.log("m")
    assert len(sink.msgs) < total  # killed mid-stream
    runner.start("m")  # what the supervisor does
    await sink.wait_count(total, timeout=120)
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    got = sorted(int(m.data) for m in sink.msgs)
    assert got == list(range(total))  # none lost, none twice


async def test_sigterm_drains_stops_the_program_and_a_restart_finishes_exactly(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    total = 3000
    source = await fill(nc, runner, [str(i).encode() for i in range(total)])
    runner.write([source, numaflow_map("m", "slow_copy.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}], limits={"readBatchSize": 50})
    await runner.start_all()
    await sink.wait_count(300, timeout=90)
    vertex = runner.procs["m"]
    programs = await wait_for(lambda: children(vertex.pid), 10, "the vertex's UDF program")
    assert await runner.terminate("m", timeout=60) == 0  # drained: the batch in hand finished, then stopped
    assert len(sink.msgs) < total
    assert not any(alive(pid) for pid in programs)  # the program stopped with it
    runner.start("m")
    await sink.wait_count(total, timeout=120)
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    assert sorted(int(m.data) for m in sink.msgs) == list(range(total))


async def test_sigkill_of_the_vertex_takes_its_program_along_and_a_restart_finishes_exactly(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.o")
    total = 2000
    source = await fill(nc, runner, [str(i).encode() for i in range(total)])
    runner.write([source, numaflow_map("m", "slow_copy.py"), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}], limits={"readBatchSize": 50})
    await runner.start_all()
    await sink.wait_count(200, timeout=90)
    programs = await wait_for(lambda: children(runner.procs["m"].pid), 10, "the vertex's UDF program")
    runner.kill("m")
    await wait_for(lambda: not any(alive(pid) for pid in programs), 10, "the orphaned program to get SIGKILL")
    runner.start("m")
    await sink.wait_count(total, timeout=120)
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    assert sorted(int(m.data) for m in sink.msgs) == list(range(total))
