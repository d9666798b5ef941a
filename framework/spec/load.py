"""`load_pipeline(path)`: parse, validate the models and the graph, and raise `SpecError` whose
message names the file, the field path and the reason for every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from framework.spec.envsubst import EnvRef, substitute, unset_message
from framework.spec.graph import graph_problems
from framework.spec.handlers import handler_problems
from framework.spec.model import Pipeline
from framework.spec.types import shown
from framework.spec.yaml_file import YamlFileError, read_yaml_file


class SpecError(ValueError):
    """A pipeline file that cannot run; `problems` holds (field path, reason) pairs."""

    SHOWN = 100  # a file with thousands of errors needs its first ones fixed, not a screenful

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {path}: {reason}" if path else f"{file}: {reason}" for path, reason in problems]
        if len(lines) > self.SHOWN:
            lines = [*lines[:self.SHOWN], f"{file}: ... and {len(lines) - self.SHOWN} more problems"]
        super().__init__("\n".join(lines))


def load_pipeline(path: str | Path, *, check_handlers: bool = True, env: Mapping[str, str] | None = None,
                  allow_unset: bool = False) -> Pipeline:
    """Read, validate and return the pipeline in `path`; raise `SpecError` listing every problem.
    `${VAR}` references are replaced from `env` (default: this process's environment); see
    `parse_pipeline` for `allow_unset`."""
    path = Path(path)
    file = str(path)
    try:
        raw = read_yaml_file(path)
    except YamlFileError as exc:
        raise SpecError(file, exc.problems) from None
    return parse_pipeline(raw, file=file, base_dir=path.parent, check_handlers=check_handlers, env=env,
                          allow_unset=allow_unset)


def parse_pipeline(
    raw: Any, *, file: str = "<pipeline>", base_dir: Path | None = None, check_handlers: bool = True,
    env: Mapping[str, str] | None = None, allow_unset: bool = False,
) -> Pipeline:
    """Validate a parsed pipeline document. An unset `${VAR}` without a default is an error naming
    the field, unless `allow_unset` (what `render` does: the pods substitute from their own
    environment), which keeps its `${VAR}` text, fine wherever any string is."""
    if not isinstance(raw, dict):
        found = "is empty" if raw is None else f"holds {shown(raw)}"
        raise SpecError(file, [("", f"the file {found}; it must hold a mapping with apiVersion, kind, metadata "
                                    "and spec")])
    sub = substitute(raw, os.environ if env is None else env)
    problems = sub.problems + ([] if allow_unset else [(r.path, unset_message(r.name)) for r in sub.unset])
    if problems:
        raise SpecError(file, problems)
    try:
        pipeline = Pipeline.model_validate(sub.doc)
    except ValidationError as exc:
        raise SpecError(file, [_env_hint((_format_loc(e["loc"]), _clean_msg(e)), sub.unset)
                               for e in exc.errors()]) from None
    pipeline._env_refs = sub.refs
    problems = graph_problems(pipeline)
    if check_handlers and not problems:
        problems = handler_problems(pipeline, base_dir)
    if problems:
        raise SpecError(file, problems)
    return pipeline


def _env_hint(problem: tuple[str, str], unset: list[EnvRef]) -> tuple[str, str]:
    """A field that failed because it still holds an unset `${VAR}` says so."""
    path, reason = problem
    names = [r.name for r in unset if r.path == path]
    if not names:
        return problem
    return path, (f"{reason} (it holds ${{{names[0]}}}, which is not set here: set it, or give the value "
                  f"to check with a default, ${{{names[0]}:-...}})")


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        text = str(part)
        if isinstance(part, int):
            out += f"[{part}]"
        elif not text or any(c.isspace() or not c.isprintable() for c in text) or len(text) > 80:
            out += f"[{text[:80]!r}]"  # a key the user mistyped stays on one line, and short
        else:
            out += ("." if out else "") + text
    return out


def _clean_msg(error: ErrorDetails) -> str:
    msg: str = error["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    if error["type"] == "extra_forbidden":
        msg = "unknown field (check the spelling; keys are camelCase)"
    return msg
