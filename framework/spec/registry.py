"""The connector registry: every source and sink kind a spec may name.

Connectors are found through the entry point groups `natsflow.sources` and `natsflow.sinks`: the
entry point's name is the spec key (`kafka`, `redisStreams`), its object a `ConnectorInfo`.
natsflow's own connectors are declared in its pyproject.toml exactly as a third party's package
declares its own, so adding one touches only its folder and that package's metadata.

natsflow's own entry points are read from the pyproject.toml of the source tree `framework` is
imported from, when there is one (an editable install, or a checkout on PYTHONPATH): the installed
metadata may describe an older tree. Installed, they come from the distribution's metadata like
any other package's.

The registry is read once per process, when the spec models are built (framework/spec/model.py).
A module an entry point names is imported then, so it must import only light modules (pydantic,
`framework.spec.types`, `framework.k8s.keda`), never the connector's client library: the
implementation (`ConnectorInfo.factory`) is imported only when a vertex runs it.
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from framework.k8s.keda import KedaTrigger, UpstreamScaling
    from framework.spec.model import Vertex

SOURCE_GROUP = "natsflow.sources"
SINK_GROUP = "natsflow.sinks"
DISTRIBUTION = "natsflow"
Role = Literal["source", "sink"]

# Fields of the spec's `source:` / `sink:` blocks beside the connector keys.
# The block's own names (framework/spec/model.py ConnectorBlock) are taken too.
_BLOCK = {"kind", "config", "connector", "kinds", "role"}
_TAKEN = {"source": {"eventTime", "event_time"} | _BLOCK,
          "sink": {"retryStrategy", "retry_strategy", "timeout", "fallback"} | _BLOCK}

# (field path, reason): a problem in the pipeline file.
Problem = tuple[str, str]


@dataclass(frozen=True)
class Placement:
    """Where a connector's block is, for its `check`: the pipeline, the vertex and field paths."""

    pipeline: str  # the pipeline's name
    vertex: Vertex
    vertex_path: str  # spec.vertices[i]
    path: str  # the connector's block: spec.vertices[i].source.jetstream, ...sink.fallback.kafka


class RegistryError(RuntimeError):
    """An entry point that cannot be a connector (its object, its name, a clash with another)."""


@dataclass(frozen=True)
class ConnectorInfo:
    """What a connector package registers: the object its entry point names.

    `config` is the pydantic model of its block in the spec (derive it from
    `framework.spec.types.Model`, so its keys are camelCase and unknown ones rejected); `factory`
    is `"module:Class"`, imported only when a vertex runs, and called with the validated config
    (every secretRef already replaced by its value). The rest are optional hooks.
    """

    config: type[BaseModel]
    factory: str
    # A pip requirement installing the client library, and that library's top-level modules: a
    # spec naming this connector fails validation with `needs pip install '<install>'` when one
    # of them cannot be imported.
    install: str | None = None
    requires: tuple[str, ...] = ()
    # A source that stamps event time on arrival: it follows the default idle rule (watermarks).
    live: bool = False
    # A source whose upstream keeps its own backlog: with scale.max > 1, `natsflow render` scales
    # it by KEDA with this trigger (framework/k8s/keda.py) instead of a fixed replica count.
    keda_trigger: Callable[[UpstreamScaling], KedaTrigger] | None = None
    # A source that serves on a port: rendered as a container port and a Service.
    port: Callable[[Any], int] | None = None
    # Rules that need more than the config (the vertex, the pipeline): (config, placement) ->
    # problems with their full field paths.
    check: Callable[[Any, Placement], list[Problem]] | None = None
    # Settings the connected NATS server may not carry: (config, max_payload) -> None, or raises
    # framework.connector.ConnectorConfigError (checked by `provision`, `run` and the worker).
    server_check: Callable[[Any, int], None] | None = None
    # Where the kind is listed among the others (the spec's error texts, its schema): lowest
    # first, ties in discovery order. natsflow's own take 1-99 (entry points carry no order once
    # installed: setuptools sorts them); a third party's default comes after them.
    rank: int = 100
    # Set by the registry: the spec key (the entry point's name) and where it came from.
    name: str = ""
    origin: str = ""

    def missing(self) -> str | None:
        """Why this connector cannot run here (its client library is not installed), or None."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):  # a parent package missing, or a module set to None
                found = False
            if not found:
                return f"needs pip install '{self.install}'" if self.install else f"needs the Python module {module!r}"
        return None


def _source_tree_entry_points(group: str) -> list[metadata.EntryPoint] | None:
    """natsflow's own entry points of `group` from the pyproject.toml beside the imported
    `framework` package, or None when it is not imported from a source tree."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if not pyproject.is_file():
        return None
    project = tomllib.loads(pyproject.read_text()).get("project", {})
    if project.get("name") != DISTRIBUTION:
        return None
    declared = project.get("entry-points", {}).get(group, {})
    return [metadata.EntryPoint(name=name, value=value, group=group) for name, value in declared.items()]


def _dist_name(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    return dist.name.lower().replace("_", "-") if dist is not None else ""


def entry_points(group: str) -> list[tuple[metadata.EntryPoint, str]]:
    """(entry point, distribution) of `group`: natsflow's own first."""
    own = _source_tree_entry_points(group)
    installed = list(metadata.entry_points(group=group))
    if own is None:
        own_eps = [(ep, DISTRIBUTION) for ep in installed if _dist_name(ep) == DISTRIBUTION]
    else:
        own_eps = [(ep, DISTRIBUTION) for ep in own]
    others = [(ep, _dist_name(ep) or "?") for ep in installed if _dist_name(ep) != DISTRIBUTION]
    return own_eps + others


def _load(role: Role, group: str) -> dict[str, ConnectorInfo]:
    found: dict[str, ConnectorInfo] = {}
    for ep, dist in entry_points(group):
        where = f"entry point {group}:{ep.name} = {ep.value} ({dist})"
        if not ep.name.isidentifier() or ep.name in _TAKEN[role]:
            raise RegistryError(f"{where}: {ep.name!r} cannot be a {role} kind (a Python name, not one of "
                                f"{', '.join(sorted(_TAKEN[role]))})")
        if ep.name in found:
            if found[ep.name].origin == dist:
                continue  # the same distribution seen twice on sys.path
            raise RegistryError(f"{where}: {role} kind {ep.name!r} is already registered by {found[ep.name].origin}")
        try:
            info = ep.load()
        except Exception as exc:
            raise RegistryError(f"{where}: cannot load it: {type(exc).__name__}: {exc}") from exc
        if not isinstance(info, ConnectorInfo):
            raise RegistryError(f"{where}: names a {type(info).__name__}, not a ConnectorInfo")
        found[ep.name] = replace(info, name=ep.name, origin=dist)
    return dict(sorted(found.items(), key=lambda item: item[1].rank))  # a stable sort: ties keep their order


@cache
def sources() -> dict[str, ConnectorInfo]:
    """Every source kind, by spec key, natsflow's own first."""
    return _load("source", SOURCE_GROUP)


@cache
def sinks() -> dict[str, ConnectorInfo]:
    """Every sink kind, by spec key, natsflow's own first."""
    return _load("sink", SINK_GROUP)


def connector(role: Role, kind: str) -> ConnectorInfo:
    """The registered connector of a kind a validated spec names."""
    return (sources() if role == "source" else sinks())[kind]
