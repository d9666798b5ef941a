"""`${VAR}` references in a pipeline file, replaced in its string values after YAML parsing.

`${NAME}` is the variable's value, `${NAME:-default}` the default when it is unset or empty,
`$${` a literal `${`. Only string values are looked at (never mapping keys), and the YAML is
parsed first, so a value can never change the file's structure. A numeric field written
`"${PORT}"` gets the variable's text, which the spec's model then reads as a number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# `$${` is an escaped `${`; otherwise `${NAME}` or `${NAME:-default}` (the default may hold
# anything but `}`); a `${` that fits neither is an error, never text passed on silently.
_TOKEN = re.compile(r"\$\$\{|\$\{(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bad>))")


@dataclass(frozen=True)
class EnvRef:
    """One `${NAME}` in the file: where (a field path as in spec errors), which variable, its default."""

    path: str
    name: str
    default: str | None


@dataclass
class Substituted:
    doc: Any
    refs: list[EnvRef]  # every reference, in file order
    unset: list[EnvRef]  # references with neither a value nor a default (kept as `${NAME}` text)
    problems: list[tuple[str, str]]  # (field path, reason) for malformed references


def substitute(doc: Any, env: Mapping[str, str]) -> Substituted:
    """A copy of `doc` with every reference replaced from `env`; an unset one without a default
    stays as its `${NAME}` text and is listed in `unset` (the caller decides if that is an error)."""
    out = Substituted(None, [], [], [])
    out.doc = _walk(doc, "", env, out)
    return out


def unset_message(name: str) -> str:
    return f"environment variable {name} is not set"


def _walk(value: Any, path: str, env: Mapping[str, str], out: Substituted) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), env, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, f"{path}[{i}]", env, out) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        return _replace(value, path, env, out)
    return value


def _replace(text: str, path: str, env: Mapping[str, str], out: Substituted) -> str:
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        if m.group("bad") is not None:
            end = text.find("}", m.start())
            bad = text[m.start():end + 1] if 0 <= end < m.start() + 40 else text[m.start():m.start() + 20] + "..."
            out.problems.append((path, f"bad reference {bad!r}: write ${{NAME}} or ${{NAME:-default}} (NAME: "
                                       "letters, digits, _), or $${ for a literal ${"))
            return m.group(0)
        ref = EnvRef(path, m.group("name"), m.group("default"))
        out.refs.append(ref)
        value = env.get(ref.name)
        if value:
            return value
        if ref.default is not None:
            return ref.default
        if value is not None:  # set but empty, no default: empty is the value (as in a shell)
            return value
        out.unset.append(ref)
        return m.group(0)

    return _TOKEN.sub(one, text)
