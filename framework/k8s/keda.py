"""What a connector gives `natsflow render` to scale its source on the upstream's own backlog:
a KEDA trigger (https://keda.sh/docs/scalers/) and the Secret keys its credentials come from.

A source registers `ConnectorInfo.keda_trigger`; render calls it with an `UpstreamScaling` and
wraps the result in a ScaledObject (and a TriggerAuthentication when it names credentials).
Credentials are never inlined in a trigger: a `secretRef` is read by KEDA from that Secret, a
literal from the vertex's scaler Secret (`UpstreamScaling.secret`, created by the user).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from framework.spec.settings import Scale

_WHOLE_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


class RenderError(ValueError):
    """A pipeline that cannot be rendered as written; `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


@dataclass(frozen=True)
class UpstreamScaling:
    """What a connector's trigger is made from."""

    config: Any  # the connector's validated config (secretRefs not resolved: they stay references)
    scale: Scale  # the vertex's `scale` (lagThreshold, activationLagThreshold, ...)
    path: str  # the config's field path, e.g. spec.vertices[0].source.kafka, for RenderErrors
    secret: str  # the scaler Secret of this vertex, for credentials the spec writes literally


@dataclass(frozen=True)
class SecretKey:
    """A trigger parameter KEDA reads from a Secret."""

    parameter: str
    secret: str
    key: str


@dataclass(frozen=True)
class KedaTrigger:
    """One KEDA trigger (`type`, `metadata`) and the parameters it takes from Secrets."""

    type: str
    metadata: dict[str, str]
    auth: list[SecretKey] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {"type": self.type, "name": "upstream-lag", "metadata": dict(self.metadata)}


def keda_param(meta: dict[str, str], param: str, value: str, path: str) -> None:
    """A value KEDA reads itself: literal, or exactly `${VAR}`, which KEDA takes from the
    Deployment's environment (`<param>FromEnv`); anything else it could not substitute."""
    whole = _WHOLE_REF.match(value)
    if whole:
        meta[f"{param}FromEnv"] = whole.group(1)
    elif "${" in value:
        raise RenderError([(path, f"KEDA reads this value itself and cannot substitute {value!r}: write it "
                                  "literally or as exactly ${VAR}")])
    else:
        meta[param] = value
