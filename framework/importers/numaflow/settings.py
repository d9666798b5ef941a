"""Numaflow's pipeline and vertex settings as natsflow's: limits, scale, watermark, lifecycle and
side inputs."""

from __future__ import annotations

from typing import Any

from framework.importers.numaflow.programs import program
from framework.importers.numaflow.report import Node
from framework.importers.numaflow.values import duration, seconds

_AUTOSCALER = ("natsflow scales on the lag of the vertex's consumer per replica (KEDA's rule): set "
               "scale.lagThreshold instead")


def limits(node: Node) -> dict[str, Any]:
    out = node.take_present(("readBatchSize", "bufferMaxLength", "bufferUsageLimit"), int)
    timeout = duration(node, "readTimeout")
    if timeout is not None:
        out["readTimeout"] = timeout
    rate = node.child("rateLimit")
    if rate is not None:
        converted = {key: rate.take(key, int) for key in ("max", "min")}
        ramp = duration(rate, "rampUpDuration")
        if ramp is not None:
            converted["rampUp"] = ramp
        for key in ("store", "modes", "resumedRampUp", "ttl"):
            rate.drop(key, "natsflow's rate limit is shared by the vertex's replicas through JetStream KV and ramps "
                           "linearly after every start, resume or quiet spell")
        rate.rest()
        out["rateLimit"] = {k: v for k, v in converted.items() if v is not None}
    node.drop("concurrency", "natsflow processes a read batch at a time per replica: scale replicas or "
                             "readBatchSize instead")
    node.rest()
    return out


def scale(node: Node) -> dict[str, Any]:
    out = node.take_present(("min", "max"), int)
    if node.take("disabled", bool):
        # Numaflow runs a vertex whose autoscaling is disabled at its fixed replica count (1 here).
        fixed = max(1, out.get("min", 1))
        out = {"min": fixed, "max": fixed}
    elif "max" not in out and out:
        out["max"] = max(1, out.get("min", 1))  # natsflow's default max (1) must not be below min
        node.report.note(node.at("max"), f"not set: Numaflow's default is 50 replicas; {out['max']} is written")
    down = seconds(node, "scaleDownCooldownSeconds")
    if down is not None:
        out["scaleDownStabilization"] = down
    for key in ("lookbackSeconds", "zeroReplicaSleepSeconds", "targetProcessingSeconds", "targetBufferAvailability",
                "replicasPerScale", "replicasPerScaleUp", "replicasPerScaleDown", "scaleUpCooldownSeconds"):
        node.drop(key, _AUTOSCALER)
    node.drop("cron", "natsflow has no scheduled replica counts")
    node.rest()
    return out


def watermark(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node.note("disabled", "natsflow always tracks watermarks; only reduce windows wait on them")
    delay = duration(node, "maxDelay")
    if delay is not None:
        out["maxDelay"] = delay
    idle = node.child("idleSource")
    if idle is not None:
        converted = {key: duration(idle, key) for key in ("threshold", "incrementBy")}
        idle.drop("stepInterval", "natsflow advances an idle source's watermark once per threshold")
        idle.drop("initSourceDelay", "natsflow has no start-up delay before an idle source's watermark advances")
        idle.rest()
        if all(converted.values()):
            out["idleSource"] = converted
        else:
            idle.report.drop(idle.path, "natsflow's idleSource needs threshold and incrementBy")
    node.rest()
    return out


_PHASES = {"Running", "Paused"}


def lifecycle(node: Node) -> dict[str, Any]:
    out: dict[str, Any] = {}
    phase = node.take("desiredPhase", str)
    if phase in _PHASES:
        out["desiredPhase"] = phase
    elif phase:
        node.report.drop(node.at("desiredPhase"), f"natsflow's desired phases are Running and Paused, not {phase!r}")
    grace = seconds(node, "pauseGracePeriodSeconds")
    if grace is not None:
        out["pauseGracePeriod"] = grace
    for key in ("deletionGracePeriodSeconds", "deleteGracePeriodSeconds"):
        node.note(key, "natsflow stops a pipeline with SIGTERM: each vertex drains for `--grace` seconds")
    node.rest()
    return out


def side_input(node: Node) -> dict[str, Any] | None:
    """A spec.sideInputs entry: its retriever container becomes a `numaflow:` program."""
    name = node.take("name", str)
    trigger = node.child("trigger")
    converted = program(node)
    node.drop("volumes", "a Kubernetes volume: add it to the rendered side-input manager")
    node.rest()
    if trigger is None or not name or converted is None:
        if not name:
            node.report.error(node.at("name"), "a side input needs a name")
        if trigger is None:
            node.report.error(node.at("trigger"), "a side input needs a trigger")
        return None
    schedule = trigger.take("schedule", str)
    timezone = trigger.take("timezone", str)
    if timezone and timezone != "UTC":
        trigger.report.drop(trigger.at("timezone"), "natsflow runs cron schedules in UTC: shift the hours")
    trigger.rest()
    if not schedule:
        trigger.report.error(trigger.at("schedule"), "a side input trigger needs a schedule")
        return None
    return {"name": name, "trigger": {"schedule": schedule}, "numaflow": converted}


def edge(node: Node) -> dict[str, Any] | None:
    out: dict[str, Any] = {"from": node.take("from", str), "to": node.take("to", str)}
    if not out["from"] or not out["to"]:
        node.report.error(node.path, "an edge needs from and to")
        node.rest()
        return None
    conditions = node.child("conditions")
    if conditions is not None:
        tags = conditions.child("tags")
        conditions.rest()
        if tags is not None:
            operator = tags.take("operator", str) or "or"
            values = [str(v) for v in tags.take("values", list) or []]
            tags.rest()
            if operator not in ("or", "and", "not"):
                tags.report.error(tags.at("operator"), f"{operator!r} is not or, and or not")
            else:
                out["conditions"] = {"tags": {"operator": operator, "values": values}}
    on_full = node.take("onFull", str)
    if on_full:
        out["onFull"] = on_full
    node.rest()
    return out
