"""The autoscaling rule, one function shared by the local supervisor and the KEDA manifests'
tests, and the lag reader that feeds it (the same number KEDA's nats-jetstream scaler reads)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from nats.js import JetStreamContext

from framework.isb import names
from framework.spec import Pipeline, Scale


@dataclass(frozen=True)
class ScaleDecision:
    desired: int
    active: bool
    reason: str


def effective_cooldown(p: Pipeline, vertex: str) -> float:
    """The cooldown actually used: never shorter than the consumer's ack wait, so a vertex whose
    replica was killed stays up long enough to get its unacked messages redelivered."""
    return max(p.vertex(vertex).scale.cooldown_period, p.limits_for(vertex).ack_wait)


def desired_replicas(lag: int, current: int, scale: Scale, seconds_since_active: float | None,
                     cooldown: float | None = None) -> ScaleDecision:
    """KEDA's behaviour for a ScaledObject with one nats-jetstream trigger (AverageValue):

    - active when lag > activationLagThreshold (ignored when min >= 1);
    - from 0, an active vertex goes to max(1, min); an inactive one stays at 0;
    - from 1..N the HPA sets ceil(lag / lagThreshold) clamped to [max(1, min), max];
    - it returns to min (0) only after no activity for cooldownPeriod.
    `seconds_since_active` is None when the vertex was never active. `lag` is the highest lag of
    the vertex's triggers (one per buffer partition): the HPA takes the largest of their replica
    counts, and any one active trigger activates. The HPA's own scale-down stabilization window
    is not modelled here."""
    cooldown = scale.cooldown_period if cooldown is None else cooldown
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
    if idle >= cooldown:
        return ScaleDecision(scale.min, False, f"inactive for {idle:.0f}s >= cooldown {cooldown:.0f}s")
    return ScaleDecision(by_lag, False, f"inactive for {idle:.0f}s, cooling down ({cooldown:.0f}s)")


class LagReader:
    """Lag of a vertex: num_pending + num_ack_pending of its consumer; for a partitioned buffer the
    highest over its partitions, as KEDA sees one trigger per partition."""

    def __init__(self, js: JetStreamContext, p: Pipeline):
        self._js = js
        self._p = p

    async def lag(self, vertex: str) -> int:
        highest = 0
        for part in self._p.partitions(vertex):
            info = await self._js.consumer_info(names.stream_name(self._p.name, vertex, part),
                                                names.consumer_name(self._p.name, vertex, part))
            highest = max(highest, info.num_pending + info.num_ack_pending)
        return highest
