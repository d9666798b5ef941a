"""The Pipeline of a Numaflow file. A file may hold several resources separated by `---` (an
InterStepBufferService beside the Pipeline, as Numaflow's quick start applies them): the one
Pipeline is converted, the others are reported."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framework.spec.yaml_file import MAX_FILE_BYTES, YamlFileError, parse_yaml

_SEPARATOR = re.compile(r"^---[ \t]*(?:#.*)?$")
_LINE = re.compile(r"^line (\d+)")
_OTHERS = {"InterStepBufferService": "natsflow needs no InterStepBufferService: its buffers are JetStream "
                                    "streams on the NATS server it connects to"}


@dataclass
class NumaflowFile:
    pipeline: Any  # the Pipeline document's data
    text: str  # the Pipeline document's text (for its comments)
    others: list[tuple[str, str]] = field(default_factory=list)  # (where, why) of each other document


def read_numaflow_file(path: Path) -> NumaflowFile:
    """Raises YamlFileError (line numbers of the whole file) for an unreadable file or more than
    one Pipeline."""
    try:
        data = path.read_bytes()[:MAX_FILE_BYTES + 1]
        text = data.decode("utf-8-sig")
    except OSError as exc:
        raise YamlFileError([("", f"cannot read file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise YamlFileError([("", "not UTF-8 text (save the file as UTF-8)")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlFileError([("", f"the file is larger than {MAX_FILE_BYTES >> 10} KiB")])
    documents = [(first, part) for first, part in _split(text) if _has_content(part)]
    if len(documents) <= 1:
        first, part = documents[0] if documents else (1, text)
        return NumaflowFile(_parsed(part, first), part)
    parsed = [(first, part, _parsed(part, first)) for first, part in documents]
    pipelines = [(first, part, doc) for first, part, doc in parsed if isinstance(doc, dict)
                 and doc.get("kind") == "Pipeline"]
    if len(pipelines) != 1:
        lines = ", ".join(f"line {first}" for first, _, _ in pipelines) or "none"
        raise YamlFileError([("", f"expected one Pipeline among the file's {len(parsed)} documents, found "
                                  f"{len(pipelines)} ({lines}): convert one file per Pipeline")])
    first, part, doc = pipelines[0]
    others = []
    for at, _, other in parsed:
        if other is not doc:
            kind = other.get("kind") if isinstance(other, dict) else None
            others.append((f"line {at}", f"a document of kind {kind or '(none)'}, not converted: "
                                         + _OTHERS.get(str(kind), "only the Pipeline is")))
    return NumaflowFile(doc, part, others)


def _split(text: str) -> list[tuple[int, str]]:
    """(first line number, text) of each `---`-separated document."""
    parts: list[tuple[int, str]] = []
    start, current = 1, list[str]()
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if _SEPARATOR.match(line):
            parts.append((start, "".join(current)))
            start, current = number + 1, []
        else:
            current.append(line)
    parts.append((start, "".join(current)))
    return parts


def _has_content(part: str) -> bool:
    return any(line.strip() and not line.lstrip().startswith("#") for line in part.splitlines())


def _parsed(part: str, first: int) -> Any:
    try:
        return parse_yaml(part)
    except YamlFileError as exc:
        shifted = [(_LINE.sub(lambda m: f"line {int(m.group(1)) + first - 1}", where), why)
                   for where, why in exc.problems]
        raise YamlFileError(shifted) from None
