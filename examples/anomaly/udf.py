"""Per-host metric anomalies: a robust z-score (median / MAD) over fixed event-time windows."""

from __future__ import annotations

import json
import math
import statistics
from typing import Iterable

from framework import Datum, Message, Window


def to_metric(keys: list[str], datum: Datum) -> Message:
    """Turn generator ticks into a latency-like metric per host, with a spike every 97th tick."""
    n = json.loads(datum.value)["seq"]
    value = 50 + 10 * math.sin(n / 7) + ((n * 7919) % 13 - 6)
    if n % 97 == 0:
        value += 80
    return Message(json.dumps({"value": round(value, 2)}).encode())


def robust_z(keys: list[str], datums: Iterable[Datum], window: Window) -> Message:
    values = [json.loads(d.value)["value"] for d in datums]
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values) or 1e-9
    worst = max(values, key=lambda v: abs(v - median))
    z = 0.6745 * (worst - median) / mad
    body = {"host": keys[0], "window": f"{window.start:%H:%M:%S}-{window.end:%H:%M:%S}", "n": len(values),
            "median": round(median, 2), "worst": worst, "z": round(z, 1)}
    return Message(json.dumps(body).encode(), tags=["anomaly" if abs(z) > 3.5 else "normal"])
