"""Helpers of the Numaflow UDF tests: the pynumaflow programs of tests/numaflow_udfs/ as vertices,
fed from a JetStream stream the test fills with exact values."""

from __future__ import annotations

import sys
from pathlib import Path

UDFS = Path(__file__).resolve().parents[2] / "numaflow_udfs"


def program(script: str) -> list[str]:
    return [sys.executable, str(UDFS / script)]


def numaflow_map(name: str, script: str, **extra) -> dict:
    return {"name": name, "udf": {"numaflow": {"command": program(script), "startupTimeout": "60s"}, **extra}}


async def fill(nc, runner, values: list[bytes], keys: bool = False) -> dict:
    """A stream `SRC_<pipeline>` holding `values` in order, and the jetstream source vertex reading it."""
    js = nc.jetstream()
    stream = f"SRC_{runner.name}"
    await js.add_stream(name=stream, subjects=[f"{runner.name}.src"])
    for i, v in enumerate(values):
        await js.publish(f"{runner.name}.src", v, headers={"Nf-Keys": f'["k{i % 3}"]'} if keys else None)
    return {"name": "in", "source": {"jetstream": {"stream": stream}}}
