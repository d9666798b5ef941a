"""End to end: Numaflow's even-odd Pipeline, imported with `natsflow import numaflow`, its
`command:` placeholder filled with a pynumaflow map program, run with every vertex its own process
against a real nats-server: every number reaches exactly the sinks its tags route it to, once."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from framework.cli import main
from framework.local.embedded import free_port
from framework.spec.udf import COMMAND_PLACEHOLDER
from tests.conftest import wait_for
from tests.vertices.conftest import ready

PIPELINES = Path(__file__).parent / "numaflow_pipelines"
UDF = Path(__file__).parent / "udfs" / "even_odd.py"
NUMBERS = 200

pytestmark = pytest.mark.skipif(importlib.util.find_spec("framework.numaflow") is None,
                                reason="needs natsflow's Numaflow data plane (branch h/nf-udf)")


def post(port: int, body: bytes) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/vertices/in", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def logged(runner, sink: str) -> list[int]:
    """The numbers a log sink printed (`<vertex> id=... keys=[...] <value>` lines)."""
    return [int(m.group(1)) for m in re.finditer(rf"^{sink} id=\S+ keys=\[\w*\] (\S+)$", runner.log(sink), re.M)]


async def test_imported_even_odd_pipeline_runs_a_pynumaflow_map(runner, tmp_path: Path) -> None:
    converted = tmp_path / "pipeline.yaml"
    assert main(["import", "numaflow", str(PIPELINES / "even_odd.yaml"), "-o", str(converted)]) == 0
    spec = yaml.safe_load(converted.read_text())["spec"]
    # What the user does after importing: the command of the UDF, and a free port for the test.
    udf = spec["vertices"][1]["udf"]["numaflow"]
    assert udf["command"] == [COMMAND_PLACEHOLDER]
    udf["command"] = [sys.executable, str(UDF)]
    port = free_port()
    spec["vertices"][0]["source"]["http"]["port"] = port
    runner.write(spec["vertices"], spec["edges"])
    await runner.start_all()
    await wait_for(lambda: ready(port), 60, "the http source to listen")

    statuses = await asyncio.gather(*(asyncio.to_thread(post, port, str(n).encode()) for n in range(NUMBERS)),
                                    asyncio.to_thread(post, port, b"not-a-number"))
    assert set(statuses) == {200}
    await wait_for(lambda: len(logged(runner, "number-sink")) >= NUMBERS, 120, "every number at number-sink")
    await wait_for(lambda: len(logged(runner, "even-sink")) >= NUMBERS // 2
                   and len(logged(runner, "odd-sink")) >= NUMBERS // 2, 60, "the even and odd sinks")
    for sink in ("in", "even-or-odd", "even-sink", "odd-sink", "number-sink"):
        assert await runner.terminate(sink) == 0  # a graceful drain: nothing left half-done

    assert sorted(logged(runner, "even-sink")) == list(range(0, NUMBERS, 2))
    assert sorted(logged(runner, "odd-sink")) == list(range(1, NUMBERS, 2))
    assert sorted(logged(runner, "number-sink")) == list(range(NUMBERS))
