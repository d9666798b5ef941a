"""User code a spec names (`package.module:function`): imported at validation, so a typo fails
`natsflow run` before anything starts, with the field that names it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framework.spec.model import Pipeline
from framework.spec.programs import numaflow_programs
from framework.spec.types import Handler
from framework.spec.udf import COMMAND_PLACEHOLDER


def handler_problems(p: Pipeline, base_dir: Path | None) -> list[tuple[str, str]]:
    """Every handler the pipeline names that does not import: udf handlers, side-input handlers,
    eventTime, and sinks whose config is a handler (`udsink`), fallback sinks included."""
    problems = []
    for i, v in enumerate(p.spec.vertices):
        if v.udf is not None and v.udf.handler is not None:
            where, ref = f"udf.{v.udf.kind}", v.udf.handler.handler
        elif v.sink is not None and isinstance(v.sink.config, Handler):
            where, ref = f"sink.{v.sink.kind}", v.sink.config.handler
        elif v.source is not None and v.source.event_time is not None:
            where, ref = "source.eventTime", v.source.event_time.handler
        else:
            continue
        try:
            load_handler(ref, base_dir)
        except HandlerError as exc:
            problems.append((f"spec.vertices[{i}].{where}.handler", str(exc)))
    for i, si in enumerate(p.spec.side_inputs):
        if si.handler is None:  # a Numaflow program: started by the manager, not imported
            continue
        try:
            load_handler(si.handler, base_dir)
        except HandlerError as exc:
            problems.append((f"spec.sideInputs[{i}].handler", str(exc)))
    for i, v in enumerate(p.spec.vertices):  # a udsink as fallback imports like any handler
        fb = v.sink.fallback if v.sink is not None else None
        if fb is not None and isinstance(fb.config, Handler):
            try:
                load_handler(fb.config.handler, base_dir)
            except HandlerError as exc:
                problems.append((f"spec.vertices[{i}].sink.fallback.{fb.kind}.handler", str(exc)))
    return problems + placeholder_problems(p)


def placeholder_problems(p: Pipeline) -> list[tuple[str, str]]:
    """Numaflow programs (of vertices and side inputs) whose command is still the placeholder
    `natsflow import numaflow` wrote."""
    programs = [(f"spec.vertices[{i}].{prog.where}", prog.spec)
                for i, v in enumerate(p.spec.vertices) for prog in numaflow_programs(v)]
    programs += [(f"spec.sideInputs[{i}].numaflow", si.numaflow)
                 for i, si in enumerate(p.spec.side_inputs) if si.numaflow is not None]
    return [(f"{where}.command", f"still {COMMAND_PLACEHOLDER}, as `natsflow import numaflow` wrote it: replace it "
             "with the command that starts this program locally (e.g. [python, udf.py]); `natsflow render` runs "
             "the container instead")
            for where, program in programs if program.command and program.command[0] == COMMAND_PLACEHOLDER]


class HandlerError(ImportError):
    """A handler reference that does not import, or names something that is not callable."""


def load_handler(ref: str, base_dir: Path | None = None) -> Callable[..., Any]:
    """Import `package.module:function`; the pipeline file's directory is importable."""
    if base_dir is not None and str(base_dir.resolve()) not in sys.path:
        sys.path.insert(0, str(base_dir.resolve()))
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise HandlerError(f"cannot import module {module_name!r} ({exc})") from exc
    except Exception as exc:  # a handler module that crashes on import is the user's bug to see
        raise HandlerError(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise HandlerError(f"module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise HandlerError(f"{ref!r} is not callable")
    handler: Callable[..., Any] = target
    return handler
