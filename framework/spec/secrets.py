"""Credentials given as `{secretRef: {name, key}}` in a pipeline file, and the one place their
values are read: the environment variable `NATSFLOW_SECRET_<NAME>_<KEY>` (upper-cased, every
character other than a letter or digit as `_`). `natsflow render` wires that variable to the Secret
with `valueFrom.secretKeyRef`; `natsflow run` expects it exported. The pipeline file and the
ConfigMap holding it never contain the value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from framework.spec.load import SpecError
from framework.spec.model import Pipeline, Vertex
from framework.spec.types import SecretRef

ENV_PREFIX = "NATSFLOW_SECRET_"


def env_name(ref: SecretRef) -> str:
    return ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", f"{ref.name}_{ref.key}".upper())


def missing_message(ref: SecretRef) -> str:
    return (f"secretRef {ref.name}/{ref.key}: environment variable {env_name(ref)} is not set "
            "(rendered pods get it from the Secret; for natsflow run, export it)")


class SecretMissing(ValueError):
    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


def refs_in(value: Any, path: str) -> Iterator[tuple[str, SecretRef]]:
    """Every SecretRef in a spec model (or dict/list of them), with its field path."""
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name, field in type(value).model_fields.items():
            yield from refs_in(getattr(value, name), f"{path}.{field.alias or name}")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from refs_in(v, f"{path}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from refs_in(v, f"{path}[{i}]")


def vertex_path(p: Pipeline, v: Vertex) -> str:
    """`spec.vertices[i]`: where a vertex's fields are in the file, for messages."""
    return f"spec.vertices[{p.spec.vertices.index(v)}]"


def vertex_refs(p: Pipeline, v: Vertex) -> list[tuple[str, SecretRef]]:
    """The secretRefs a vertex's worker reads (its source or sink and fallback sink). `udf.env`
    is not among them: its values reach the program under their own names (`udf_env`)."""
    where = vertex_path(p, v)
    return [*refs_in(v.source, f"{where}.source"), *refs_in(v.sink, f"{where}.sink")]


def udf_env(p: Pipeline, v: Vertex, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`udf.env` with its secretRefs resolved: the environment `natsflow run` gives the program."""
    if v.udf is None:
        return {}
    where = f"{vertex_path(p, v)}.udf.env"
    return {k: resolve(val, f"{where}.{k}", env) for k, val in v.udf.env.items()}


def resolve(value: str | SecretRef, path: str, env: Mapping[str, str] | None = None) -> str:
    """The value of a `Secret` field: the text itself, or the referenced secret from its variable."""
    if not isinstance(value, SecretRef):
        return value
    found = (os.environ if env is None else env).get(env_name(value))
    if found is None:
        raise SecretMissing([(path, missing_message(value))])
    return found


def resolved(value: Any, path: str, env: Mapping[str, str] | None = None) -> Any:
    """A copy of a spec model (or dict/list) with every SecretRef replaced by its value: what a
    connector is built from, so connectors only ever see plain strings."""
    if isinstance(value, SecretRef):
        return resolve(value, path, env)
    if isinstance(value, BaseModel):
        update = {}
        for name, field in type(value).model_fields.items():
            old = getattr(value, name)
            new = resolved(old, f"{path}.{field.alias or name}", env)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, dict):
        items = {k: resolved(v, f"{path}.{k}", env) for k, v in value.items()}
        return items if any(items[k] is not value[k] for k in value) else value
    if isinstance(value, list):
        out = [resolved(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
        return out if any(a is not b for a, b in zip(out, value, strict=True)) else value
    return value


def check_vertex(p: Pipeline, v: Vertex, file: str, env: Mapping[str, str] | None = None) -> None:
    """Fail before anything starts when a secret the vertex's worker needs is not in the environment."""
    _check(vertex_refs(p, v), file, env)


def check_pipeline(p: Pipeline, file: str, env: Mapping[str, str] | None = None) -> None:
    """What `natsflow run` checks before starting: every secret of every vertex, udf.env included."""
    refs = [r for v in p.spec.vertices for r in vertex_refs(p, v)]
    refs += [r for v in p.spec.vertices if v.udf is not None
             for r in refs_in(v.udf.env, f"{vertex_path(p, v)}.udf.env")]
    _check(refs, file, env)


def _check(refs: list[tuple[str, SecretRef]], file: str, env: Mapping[str, str] | None) -> None:
    env = os.environ if env is None else env
    problems = [(path, missing_message(ref)) for path, ref in refs if env_name(ref) not in env]
    if problems:
        raise SpecError(file, problems)
