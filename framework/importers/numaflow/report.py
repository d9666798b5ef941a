"""What a conversion could not carry over, and a reader that notices it.

Every key of the Numaflow file is either read by a converter (`Node.take`) or reported: a key no
converter read is listed with its field path by `Node.rest`, so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Finding:
    path: str  # the Numaflow field path, e.g. spec.vertices[1].scale.lookbackSeconds
    why: str


@dataclass
class Report:
    """`dropped`: settings with no natsflow equivalent (the command fails unless --allow-partial);
    `notes`: settings natsflow covers another way, nothing lost; `errors`: the input is not a
    valid Numaflow Pipeline (always a failure)."""

    dropped: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)

    def drop(self, path: str, why: str) -> None:
        self.dropped.append(Finding(path, why))

    def note(self, path: str, why: str) -> None:
        self.notes.append(Finding(path, why))

    def error(self, path: str, why: str) -> None:
        self.errors.append(Finding(path, why))


_KINDS = {dict: "a mapping", list: "a list", str: "text", bool: "true or false", int: "a whole number"}


class Node:
    """A mapping of the Numaflow file at `path`; `take` marks a key as handled."""

    def __init__(self, value: dict[str, Any], path: str, report: Report):
        self.value = value
        self.path = path
        self.report = report
        self.taken: set[str] = set()

    @classmethod
    def of(cls, value: Any, path: str, report: Report) -> Node | None:
        """A Node for `value` if it is a mapping (`{}` included), else an error at `path`."""
        if isinstance(value, dict):
            return cls(value, path, report)
        if value is not None:
            report.error(path, f"expected a mapping, got {type(value).__name__}")
        return None

    def at(self, key: str | int) -> str:
        return f"{self.path}[{key}]" if isinstance(key, int) else f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.value.get(key) is not None

    def take(self, key: str, kind: type | tuple[type, ...] = object) -> Any:
        """The value at `key` (None when absent); a value of another type is an error, None."""
        self.taken.add(key)
        value = self.value.get(key)
        if value is None or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            return value
        wanted = kind if isinstance(kind, type) else kind[0]
        self.report.error(self.at(key), f"expected {_KINDS.get(wanted, wanted.__name__)}, got {value!r:.40}")
        return None

    def take_present(self, keys: tuple[str, ...], kind: type | tuple[type, ...] = object) -> dict[str, Any]:
        """`take` of each of `keys`, keeping only those that are set."""
        values = {key: self.take(key, kind) for key in keys}
        return {key: value for key, value in values.items() if value is not None}

    def child(self, key: str) -> Node | None:
        self.taken.add(key)
        return Node.of(self.value.get(key), self.at(key), self.report)

    def convert(self, key: str, convert: Callable[[Node], Any], into: dict[str, Any],
                as_key: str | None = None) -> None:
        """`into[as_key or key] = convert(the mapping at key)` when that is set and converts to something."""
        child = self.child(key)
        converted = convert(child) if child is not None else None
        if converted:
            into[as_key or key] = converted

    def children(self, key: str) -> list[Node]:
        """The mappings of the list at `key` (each at `path.key[i]`)."""
        items = self.take(key, list) or []
        nodes = [Node.of(item, self.at(key) + f"[{i}]", self.report) for i, item in enumerate(items)]
        return [n for n in nodes if n is not None]

    def drop(self, key: str, why: str) -> None:
        """`key`, when set, has no natsflow equivalent."""
        self.taken.add(key)
        if key in self.value:
            self.report.drop(self.at(key), why)

    def note(self, key: str, why: str) -> None:
        """`key`, when set, is covered by natsflow another way."""
        self.taken.add(key)
        if key in self.value:
            self.report.note(self.at(key), why)

    def rest(self, why: str = "natsflow has no equivalent of this field (or it is no Numaflow field: check the "
                              "spelling)") -> None:
        """Every key not taken is reported as dropped."""
        for key in self.value:
            if key not in self.taken:
                self.report.drop(self.at(key), why)
