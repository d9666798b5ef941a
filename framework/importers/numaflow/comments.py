"""The Numaflow file's own comments, for the converted file: those above its first key, and those
inside each vertex's block (by vertex name). PyYAML drops comments, so they are read from the
text; comments elsewhere (edges, pipeline settings) are not carried over."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VERTICES = re.compile(r"^(\s*)vertices:\s*(#.*)?$")
_NAME = re.compile(r"^\s*(?:-\s+)?name:\s*[\"']?([-a-z0-9.]+)")


@dataclass
class FileComments:
    leading: list[str] = field(default_factory=list)  # above the file's first key
    vertices: dict[str, list[str]] = field(default_factory=dict)  # inside a vertex's block


def _comment(line: str) -> tuple[str | None, bool]:
    """(the comment's text, whether the whole line is a comment)."""
    stripped = line.strip()
    if stripped.startswith("#"):
        return stripped[1:].strip(), True
    for match in re.finditer(r"\s#", line):
        before = line[:match.start()]
        if before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
            return line[match.end():].strip(), False
    return None, False


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def file_comments(text: str) -> FileComments:
    found = FileComments()
    lines = text.splitlines()
    start = 0
    while start < len(lines):
        comment, whole = _comment(lines[start])
        if lines[start].strip() and not whole:
            break
        if comment:
            found.leading.append(comment)
        start += 1
    item_indent: int | None = None
    name: str | None = None
    current: list[str] = []
    pending: list[str] = []
    within = False
    for line in lines[start:]:
        match = _VERTICES.match(line)
        if match and not within:
            within = True
            continue
        if not within or not line.strip():
            continue
        comment, whole = _comment(line)
        if whole:
            pending += [comment] if comment else []
            continue
        if item_indent is None:
            item_indent = _indent(line)
        if _indent(line) < item_indent or (_indent(line) == item_indent and not line.lstrip().startswith("-")):
            break  # past the vertices list
        if _indent(line) == item_indent:  # a new vertex
            if name is not None:
                found.vertices[name] = current
            name, current = None, []
        current += pending + ([comment] if comment else [])
        pending = []
        named = _NAME.match(line)
        if named and name is None and _indent(line.replace("-", " ", 1)) == item_indent + 2:
            name = named.group(1)
    if name is not None:
        found.vertices[name] = current + pending
    found.vertices = {k: v for k, v in found.vertices.items() if v}
    return found
