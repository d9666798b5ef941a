"""Every example pipeline validates (handlers import), and the window handlers compute right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from framework import Datum, Window
from framework.spec import load_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["sentiment", "anomaly", "clicks", "serving"])
def test_example_pipeline_validates(name):
    p = load_pipeline(EXAMPLES / name / "pipeline.yaml")
    assert p.name == name


def metric(v: float) -> Datum:
    return Datum(["host-1"], json.dumps({"value": v}).encode())


def test_robust_z_flags_a_spike_and_not_noise():
    from examples.anomaly.udf import robust_z

    window = Window.from_ms(0, 5000)
    calm = robust_z(["host-1"], iter([metric(v) for v in (50, 52, 49, 51, 50, 48, 53, 50)]), window)
    spike = robust_z(["host-1"], iter([metric(v) for v in (50, 52, 49, 131, 50, 48, 53, 50)]), window)
    assert calm.tags == ["normal"] and spike.tags == ["anomaly"]
    assert json.loads(spike.value)["worst"] == 131


def test_click_count():
    from examples.clicks.udf import count

    out = count(["page-a"], iter([Datum(["page-a"], b"{}")] * 7), Window.from_ms(0, 10_000))
    assert json.loads(out.value) == {"page": "page-a", "clicks": 7, "until": "00:00:10"}
