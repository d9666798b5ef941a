"""Numaflow's value shapes in natsflow's: Go durations, Kubernetes secret selectors and env lists."""

from __future__ import annotations

import re
from typing import Any

from framework.importers.numaflow.report import Node
from framework.spec.types import format_seconds

# Go's time.ParseDuration: a sequence of decimal numbers each with a unit ("1m30s", "1.5h", "300ms").
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration, or None when `text` is not one."""
    text = text.strip()
    if text == "0":
        return 0.0
    parts = _GO_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _GO_UNITS[u] for n, u in parts)


def duration(node: Node, key: str) -> str | None:
    """The duration at `key` written the way natsflow reads it (`90s`, `500ms`), or None."""
    value = node.take(key, (str, int, float))
    if value is None:
        return None
    seconds = float(value) if not isinstance(value, str) else go_duration(value)
    if seconds is None:
        node.report.error(node.at(key), f"{value!r:.40} is not a duration (Go syntax: 1m30s, 500ms)")
        return None
    return format_seconds(seconds)


def seconds(node: Node, key: str) -> str | None:
    """A `...Seconds` whole number at `key` as a natsflow duration."""
    value = node.take(key, int)
    return None if value is None else format_seconds(float(value))


def secret_ref(node: Node, key: str) -> dict[str, Any] | None:
    """A Kubernetes SecretKeySelector ({name, key}) at `key` as natsflow's `{secretRef: {name, key}}`."""
    selector = node.child(key)
    if selector is None:
        return None
    name, item = selector.take("name", str), selector.take("key", str)
    selector.note("optional", "natsflow requires the secret")
    selector.rest()
    if not name or not item:
        node.report.error(node.at(key), "a secret selector needs name and key")
        return None
    return {"secretRef": {"name": name, "key": item}}


def env_vars(node: Node, key: str) -> dict[str, Any]:
    """A container's `env` list (name/value or valueFrom.secretKeyRef) as natsflow's env mapping."""
    env: dict[str, Any] = {}
    for var in node.children(key):
        name = var.take("name", str)
        if not name:
            var.report.error(var.path, "an env entry needs a name")
            continue
        if var.has("value"):
            value = var.take("value", (str, int, float, bool))
            env[name] = str(value).lower() if isinstance(value, bool) else str(value)
        elif var.has("valueFrom"):
            source = var.child("valueFrom")
            if source is not None:
                ref = secret_ref(source, "secretKeyRef") if source.has("secretKeyRef") else None
                source.rest("natsflow env values are text or a secretRef (no configMapKeyRef or fieldRef)")
                if ref is not None:
                    env[name] = ref
        else:
            var.take("value")
        var.rest()
    return env
