"""The converted pipeline as a readable YAML file: the report as a header comment, a blank line
between vertices, short lists on one line, and a comment above every `command:` placeholder."""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from framework.importers.numaflow.comments import FileComments
from framework.importers.numaflow.report import Finding, Report
from framework.spec.udf import COMMAND_PLACEHOLDER

PLACEHOLDER_COMMENT = "# TODO: how this program starts locally, e.g. [python, udf.py] (render uses the container)"


class _Dumper(yaml.SafeDumper):
    """Block style, except lists of scalars (commands, tag values), which read best on one line."""


def _list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flow = all(not isinstance(i, (dict, list)) for i in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flow)


_Dumper.add_representer(list, _list)


def header(source: str, report: Report, leading: list[str]) -> list[str]:
    lines = [*leading, ""] if leading else []
    lines += [f"Converted by `natsflow import numaflow` from {source}; docs/numaflow.md explains each field."]
    if report.dropped:
        lines += ["", f"Not converted ({len(report.dropped)}):", *_listed(report.dropped)]
    else:
        lines += ["Every setting was converted."]
    if report.notes:
        lines += ["", "Covered differently by natsflow:", *_listed(report.notes)]
    return ["# " + line if line else "#" for line in lines]


def _listed(findings: list[Finding]) -> list[str]:
    out = []
    for f in findings:
        wrapped = textwrap.wrap(f"{f.path}: {f.why}", 110, initial_indent="- ", subsequent_indent="    ")
        out += wrapped
    return out


def pipeline_yaml(pipeline: dict[str, Any], source: str, report: Report, comments: FileComments | None = None) -> str:
    """The file's text; `comments`: the Numaflow file's own, kept at the top and above their vertices."""
    comments = comments or FileComments()
    body = yaml.dump(pipeline, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                     allow_unicode=True)
    lines: list[str] = []
    in_vertices = False
    for line in body.splitlines():
        stripped = line.lstrip()
        if line.startswith("  ") and not line.startswith(("   ", "  - ")):
            in_vertices = stripped == "vertices:"
            if stripped.endswith(":") and lines and not lines[-1].endswith("spec:"):
                lines.append("")  # a blank line between the spec's sections
        elif in_vertices and line.startswith("  - name: "):
            if not lines[-1].endswith("vertices:"):
                lines.append("")
            lines += [f"  # {c}" for c in comments.vertices.get(line[len("  - name: "):].strip("'\""), [])]
        if COMMAND_PLACEHOLDER in line:
            lines.append(" " * (len(line) - len(stripped)) + PLACEHOLDER_COMMENT)
        lines.append(line)
    return "\n".join(header(source, report, comments.leading) + lines) + "\n"
