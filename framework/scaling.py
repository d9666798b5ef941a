"""The autoscaling rule, one function shared by the local supervisor and the KEDA manifests'
tests, and the lag reader that feeds it (the same number KEDA's nats-jetstream scaler reads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nats.js import JetStreamContext

from . import buffer as b
from .spec import Pipeline, Scale


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    active: bool
    reason: str


def desired_replicas(lag: int, current: int, scale: Scale, seconds_since_active: float | None) -> ScaleDecision:
    """KEDA's behaviour for a ScaledObject with one nats-jetstream trigger (AverageValue):

    - active when lag > activationLagThreshold (ignored when min >= 1);
    - from 0, an active vertex goes to max(1, min); an inactive one stays at 0;
    - from 1..N the HPA sets ceil(lag / lagThreshold) clamped to [max(1, min), max];
    - it returns to min (0) only after no activity for cooldownPeriod.
    `seconds_since_active` is None when the vertex was never active."""
    floor = max(1, scale.min)
    by_lag = min(scale.max, max(floor, math.ceil(lag / scale.lag_threshold)))
    if scale.min >= 1:
        return ScaleDecision(by_lag, True, f"lag {lag} / threshold {scale.lag_threshold} (min {scale.min})")
    active = lag > scale.activation_lag_threshold
    if active:
        if current == 0:
            return ScaleDecision(floor, True, f"activated: lag {lag} > {scale.activation_lag_threshold}")
        return ScaleDecision(by_lag, True, f"lag {lag} / threshold {scale.lag_threshold}")
    if current == 0:
        return ScaleDecision(0, False, "inactive at zero")
    idle = seconds_since_active if seconds_since_active is not None else math.inf
    if idle >= scale.cooldown_period:
        return ScaleDecision(scale.min, False, f"inactive for {idle:.0f}s >= cooldown {scale.cooldown_period:.0f}s")
    return ScaleDecision(by_lag, False, f"inactive for {idle:.0f}s, cooling down ({scale.cooldown_period:.0f}s)")


class LagReader:
    """Lag of a vertex: num_pending + num_ack_pending of its consumer(s), summed over partitions."""

    def __init__(self, js: JetStreamContext, p: Pipeline):
        self._js = js
        self._p = p

    async def lag(self, vertex: str) -> int:
        total = 0
        for part in b.partitions(self._p, vertex):
            info = await self._js.consumer_info(b.stream_name(self._p.name, vertex, part),
                                                b.consumer_name(self._p.name, vertex, part))
            total += info.num_pending + info.num_ack_pending
        return total
