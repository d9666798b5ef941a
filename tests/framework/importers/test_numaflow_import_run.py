"""End to end: Numaflow pipelines imported with `natsflow import numaflow`, their `command:`
placeholders filled with pynumaflow programs, run with every vertex its own process against a real
nats-server. Even-odd: every number reaches exactly the sinks its tags route it to, once. Keyed
fixed-window reduce: the per-key sums over all windows are exact (no loss, no duplicate window).
User-defined source, transformer and sink: every record written exactly once."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from framework.cli import main
from framework.local import process
from framework.local.embedded import free_port
from framework.spec.udf import COMMAND_PLACEHOLDER
from tests.conftest import wait_for
from tests.vertices.conftest import ready

PIPELINES = Path(__file__).parent / "numaflow_pipelines"
UDFS = Path(__file__).parent / "udfs"
NUMBERS = 200

pytestmark = pytest.mark.skipif(importlib.util.find_spec("framework.numaflow") is None,
                                reason="needs natsflow's Numaflow data plane (branch h/nf-udf)")


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/vertices/in", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def imported(name: str, out: Path) -> dict:
    assert main(["import", "numaflow", str(PIPELINES / f"{name}.yaml"), "-o", str(out)]) == 0
    spec: dict = yaml.safe_load(out.read_text())["spec"]
    return spec


async def post_all(port: int, bodies: list[bytes]) -> None:
    statuses = await asyncio.gather(*(asyncio.to_thread(post, port, body) for body in bodies))
    assert set(statuses) == {200}


def natsflow_run(runner, output: Path) -> subprocess.Popen:
    """`natsflow run` of the runner's file against the session's server, its output to `output`."""
    with open(output, "w") as out:
        return process.popen([sys.executable, "-m", "framework.cli", "run", str(runner.file), "--nats-url",
                              runner.url], env=runner.env(), cwd=Path(__file__).parents[3], stdout=out, stderr=out)


def logged(runner, sink: str) -> list[int]:
    """The numbers a log sink printed (`<vertex> id=... keys=[...] <value>` lines)."""
    return [int(m.group(1)) for m in re.finditer(rf"^{sink} id=\S+ keys=\[\w*\] (\S+)$", runner.log(sink), re.M)]


async def test_imported_even_odd_pipeline_runs_a_pynumaflow_map(runner, tmp_path: Path) -> None:
    spec = imported("even_odd", tmp_path / "pipeline.yaml")
    # What the user does after importing: the command of the UDF, and a free port for the test.
    udf = spec["vertices"][1]["udf"]["numaflow"]
    assert udf["command"] == [COMMAND_PLACEHOLDER]
    udf["command"] = [sys.executable, str(UDFS / "even_odd.py")]
    port = free_port()
    spec["vertices"][0]["source"]["http"]["port"] = port
    runner.write(spec["vertices"], spec["edges"])
    await runner.start_all()
    await wait_for(lambda: ready(port), 60, "the http source to listen")

    await post_all(port, [str(n).encode() for n in range(NUMBERS)] + [b"not-a-number"])
    await wait_for(lambda: len(logged(runner, "number-sink")) >= NUMBERS, 120, "every number at number-sink")
    await wait_for(lambda: len(logged(runner, "even-sink")) >= NUMBERS // 2
                   and len(logged(runner, "odd-sink")) >= NUMBERS // 2, 60, "the even and odd sinks")
    for sink in ("in", "even-or-odd", "even-sink", "odd-sink", "number-sink"):
        assert await runner.terminate(sink) == 0  # a graceful drain: nothing left half-done

    assert sorted(logged(runner, "even-sink")) == list(range(0, NUMBERS, 2))
    assert sorted(logged(runner, "odd-sink")) == list(range(1, NUMBERS, 2))
    assert sorted(logged(runner, "number-sink")) == list(range(NUMBERS))


async def test_imported_keyed_fixed_window_reduce_gives_exact_sums(runner, tmp_path: Path) -> None:
    spec = imported("reduce_fixed", tmp_path / "pipeline.yaml")
    vertices = {v["name"]: v for v in spec["vertices"]}
    assert vertices["compute-sum"]["udf"]["numaflow"]["reduce"]["partitions"] == 2
    vertices["atoi"]["udf"]["numaflow"]["command"] = [sys.executable, str(UDFS / "even_odd.py")]
    vertices["compute-sum"]["udf"]["numaflow"]["command"] = [sys.executable, str(UDFS / "sum.py")]
    # The test's own settings: short windows closing without the file's 90s allowed lateness, one
    # replica of the map, a free port.
    reduce = vertices["compute-sum"]["udf"]["numaflow"]["reduce"]
    assert reduce.pop("allowedLateness") == "90s"
    reduce["window"] = {"fixed": {"length": "2s"}}
    vertices["atoi"]["scale"] = {"min": 1, "max": 1}
    port = free_port()
    vertices["in"]["source"]["http"]["port"] = port
    runner.write(spec["vertices"], spec["edges"], limits=spec["limits"], watermark={"maxDelay": "1s"})
    await runner.start_all()
    await wait_for(lambda: ready(port), 60, "the http source to listen")

    await post_all(port, [str(n).encode() for n in range(NUMBERS)])
    evens, odds = sum(range(0, NUMBERS, 2)), sum(range(1, NUMBERS, 2))

    def sums() -> dict[str, int]:
        found = re.findall(r"^sink id=\S+ keys=\[(\w+)\] (\d+)$", runner.log("sink"), re.M)
        return {key: sum(int(v) for k, v in found if k == key) for key in ("even", "odd")}

    # The http source goes idle after the last post: its watermark passes every window.
    await wait_for(lambda: sums() == {"even": evens, "odd": odds}, 120, "every window's sum at the sink")
    for vertex in ("in", "atoi", "compute-sum", "sink"):  # each drains what it holds before it exits
        assert await runner.terminate(vertex) == 0
    assert sums() == {"even": evens, "odd": odds}  # no window emitted twice


async def test_imported_user_defined_source_transformer_and_sink(runner, tmp_path: Path) -> None:
    """A Sourcer, a SourceTransformer and a Sinker (pynumaflow, from tests/numaflow_udfs/), run by
    `natsflow run` itself: every record the source makes is written by the sink exactly once."""
    spec = imported("user_defined", tmp_path / "pipeline.yaml")
    programs = Path(__file__).parents[2] / "numaflow_udfs"
    source, sink = spec["vertices"][0]["source"], spec["vertices"][1]["sink"]
    source["numaflow"].update(command=[sys.executable, str(programs / "counter_source.py")], env={"TOTAL": "300"})
    source["transformer"]["numaflow"]["command"] = [sys.executable, str(programs / "event_time.py")]
    written = tmp_path / "written.txt"
    # The file's API_TOKEN comes from a Kubernetes Secret; this sink writes a file instead.
    sink["numaflow"].update(command=[sys.executable, str(programs / "file_sink.py")],
                            env={"SINK_FILE": str(written)})
    runner.write(spec["vertices"], spec["edges"])
    err = tmp_path / "run.err"
    proc = natsflow_run(runner, err)

    def lines() -> list[str]:
        return written.read_text().splitlines() if written.exists() else []

    try:
        await wait_for(lambda: len(lines()) >= 300, 120, "300 records through the sink")
        process.interrupt(proc)
        await wait_for(lambda: proc.poll() is not None, 60, "natsflow run to drain and stop")
    finally:
        process.terminate_all([proc], grace=20)
    assert proc.returncode == 0, err.read_text()[-2000:]
    assert sorted(map(int, lines())) == list(range(300))
