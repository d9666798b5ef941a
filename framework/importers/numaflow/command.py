"""`natsflow import numaflow FILE [-o OUT] [--allow-partial]`: convert, check the result with
natsflow's own loader, write it, and say what did not convert (exit 1 unless --allow-partial)."""

from __future__ import annotations

import sys
from pathlib import Path

from framework.importers.numaflow.comments import file_comments
from framework.importers.numaflow.documents import read_numaflow_file
from framework.importers.numaflow.output import pipeline_yaml
from framework.importers.numaflow.pipeline import convert
from framework.importers.numaflow.report import Finding
from framework.spec.load import SpecError, parse_pipeline
from framework.spec.yaml_file import YamlFileError, parse_yaml


def import_numaflow(file: str, output: str | None, *, allow_partial: bool) -> int:
    """Exit status: 0 when everything converted (or --allow-partial), 1 otherwise; the report on stderr."""
    try:
        numaflow = read_numaflow_file(Path(file))
    except YamlFileError as exc:
        _show(file, [Finding(path, why) for path, why in exc.problems])
        return 1
    result = convert(numaflow.pipeline)
    report = result.report
    report.notes[:0] = [Finding(where, why) for where, why in numaflow.others]
    if report.errors:
        print(f"{file}: not a valid Numaflow Pipeline:", file=sys.stderr)
        _show(file, report.errors)
        return 1
    comments = file_comments(numaflow.text)
    text = pipeline_yaml(result.pipeline, Path(file).name, report, comments)
    target = output or "<stdout>"
    invalid = _natsflow_problems(text, target)
    for finding in report.notes:
        print(f"{file}: {finding.path}: note: {finding.why}", file=sys.stderr)
    if report.dropped:
        print(f"{file}: {len(report.dropped)} settings have no natsflow equivalent:", file=sys.stderr)
        _show(file, report.dropped)
    if invalid:
        print(f"{target}: the converted pipeline does not validate yet:", file=sys.stderr)
        _show(target, invalid)
    if (report.dropped or invalid) and not allow_partial:
        print("nothing written: fix the above, or rerun with --allow-partial to write the rest", file=sys.stderr)
        return 1
    if output is None:
        sys.stdout.write(text)
    else:
        Path(output).write_text(text)
        print(f"wrote {output}: pipeline {result.pipeline['metadata']['name']!r}, "
              f"{len(result.pipeline['spec']['vertices'])} vertices", file=sys.stderr)
    return 0


def _natsflow_problems(text: str, target: str) -> list[Finding]:
    """What natsflow's loader says about the converted file (as `render` reads it: no handler
    imports, so placeholders pass)."""
    try:
        parse_pipeline(parse_yaml(text), file=target, check_handlers=False, env={}, allow_unset=True)
    except SpecError as exc:
        return [Finding(path, why) for path, why in exc.problems]
    return []


def _show(file: str, findings: list[Finding]) -> None:
    for f in findings:
        print(f"{file}: {f.path}: {f.why}" if f.path else f"{file}: {f.why}", file=sys.stderr)
