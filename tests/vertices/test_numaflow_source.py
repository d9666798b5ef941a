"""A user-defined source written with pynumaflow's Sourcer as natsflow's `numaflow` source: exact
counts at the sink, pending as the source's lag, and a SIGKILL of the vertex mid-stream."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from framework.local.embedded import free_port
from tests.conftest import REPO, Collector, PipelineRunner, wait_for
from tests.vertices.conftest import backlog_while_full, scrape_gauge

pytest.importorskip("pynumaflow")

PROGRAM = str(REPO / "tests" / "numaflow_udfs" / "counter_source.py")


def source_pipeline(runner: PipelineRunner, total: int, batch: int, limits: dict | None = None) -> None:
    vertices = [
        {"name": "in", "source": {"numaflow": {"command": [sys.executable, PROGRAM], "env": {"TOTAL": str(total)},
                                               "readBatchSize": batch, "readTimeout": "100ms"}}},
        {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}},
    ]
    runner.write(vertices, [{"from": "in", "to": "out"}], limits=limits)


def numbers(out: Collector) -> list[int]:
    return [int(m.data) for m in out.msgs]


def programs_of(pipeline: str, script: str = PROGRAM) -> list[int]:
    """Pids of the `script` programs natsflow started for `pipeline` (NUMAFLOW_PIPELINE_NAME)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if script.encode() not in (proc / "cmdline").read_bytes():
                continue
            env = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"NUMAFLOW_PIPELINE_NAME={pipeline}".encode() in env:
            found.append(int(proc.name))
    return found


async def test_a_pynumaflow_sourcer_feeds_the_pipeline_exactly_once(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, total=2000, batch=100)
    await runner.start_all()
    await out.wait_count(2000, timeout=90)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(numbers(out)) == list(range(2000))
    assert len(out.msgs) == 2000
    assert {m.headers["Nf-Keys"] for m in out.msgs} == {'["k0"]', '["k1"]', '["k2"]'}
    assert await runner.terminate("in") == 0
    assert programs_of(runner.name) == []  # a graceful stop stops the program too
    assert "numaflow source in: partitions [0]" in runner.log("in")


async def test_sigkill_of_the_source_vertex_mid_stream_loses_nothing(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    total = 20_000
    source_pipeline(runner, total=total, batch=20)
    await runner.start_all()
    await out.wait_count(1000, timeout=90)
    runner.kill("in")
    await wait_for(lambda: not programs_of(runner.name), 10, "the program to die with its vertex")
    at_kill = len(out.msgs)
    assert at_kill < total, "the kill came after the source had read everything"
    runner.start("in")
    await out.wait_count(total, timeout=120)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    # The restarted counter gives 0.. again with the same offsets: JetStream drops those as duplicates.
    assert sorted(set(numbers(out))) == list(range(total)), "lost records"
    assert len(out.msgs) == total, "duplicates at the sink"
    print(f"killed after {at_kill} of {total} records reached the sink")


async def test_back_pressure_and_pending_as_the_lag(runner, nc):
    total = 3000
    out = await Collector().start(nc, f"{runner.name}.out")
    source_pipeline(runner, total=total, batch=50, limits={"bufferMaxLength": 400, "bufferUsageLimit": 50})
    await runner.provision()
    port = free_port()
    runner.start("in", NATSFLOW_METRICS_PORT=str(port))  # the sink is not running: its buffer fills
    backed_up = await backlog_while_full(runner, nc, port, total, "the Sourcer's pending as a positive lag")
    assert await runner.stream_messages(nc, f"nf_{runner.name}_out") <= 400  # the source waited
    runner.start("out")
    await out.wait_count(total, timeout=90)
    await wait_for(lambda: scrape_gauge(port, "source_upstream_backlog", state="lag") == 0, 30, "the lag to reach 0")
    assert sorted(numbers(out)) == list(range(total)) and len(out.msgs) == total
    print(f"lag while the buffer was full: {backed_up:g}")


async def test_sigterm_drains_and_a_killed_program_ends_the_vertex(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    total = 20_000
    source_pipeline(runner, total=total, batch=20)
    await runner.start_all()
    await out.wait_count(500, timeout=90)
    assert await runner.terminate("in") == 0  # graceful: the batch in hand stored and acked
    assert programs_of(runner.name) == []  # and the program stopped with it
    runner.start("in")
    await out.wait_count(len(out.msgs) + 500, timeout=90)  # new records beyond the re-read (deduplicated) ones
    [pid] = await wait_for(lambda: programs_of(runner.name), 30, "the restarted vertex's program")
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: runner.procs["in"].poll() is not None, 30, "the vertex to exit after its program died")
    assert runner.procs["in"].returncode != 0
    assert "was killed by signal 9" in runner.log("in")
    runner.start("in")  # what its supervisor does
    await out.wait_count(total, timeout=120)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(set(numbers(out))) == list(range(total)), "lost records"
    assert len(out.msgs) == total, "duplicates at the sink"
