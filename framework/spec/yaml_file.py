"""Reading a YAML file into plain data (dict, list, str, int, float, bool, None), bounded.

A pipeline file is user input: whatever it holds, reading it ends quickly with the data or with a
`YamlFileError` naming the line, never with a traceback or a hang. Beyond `yaml.safe_load` this
rejects duplicate keys (YAML calls them an error; PyYAML silently keeps the last one), bounds the
file size, the nesting depth and the size after aliases are expanded, and keeps dates as text
(no field takes a datetime, and `2024-02-30` must not be a crash).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# A pipeline file is a few kilobytes. The bound keeps reading quick whatever the file holds: the
# pure-Python parser needs about 3 s and 90 MB for 256 KiB of the worst content (`[1,1,1,...]`),
# and `natsflow render` must fit the file into a ConfigMap (1 MiB) anyway.
MAX_FILE_BYTES = 256 << 10
# A pipeline nests about 8 levels (spec.vertices[i].sink.fallback.retryStrategy.backoff), a JSON
# Schema in outputSchema a few dozen; PyYAML composes recursively, so this also keeps it far
# from Python's recursion limit.
MAX_DEPTH = 64
# Values after aliases are expanded: `b: &b [*a, *a]` doubles at every line, so a short file can
# stand for billions of values that validation would walk one by one.
MAX_VALUES = 1_000_000

_DROPPED_TAGS = ("timestamp", "binary", "set", "omap", "pairs")  # not plain data: rejected (or text)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlFileError(ValueError):
    """`problems` holds (where, reason) pairs; `where` is `line N` or empty."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {reason}" if where else reason for where, reason in problems))


class _Loader(yaml.SafeLoader):
    """SafeLoader with a nesting bound while composing and mark-carrying errors for bad scalars."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConstructorError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. an int of 5,000 digits: Python refuses it
            reason = str(exc).split(";")[0]  # Python's advice on its own limits is not for the user
            raise ConstructorError(None, None, f"cannot read this value: {reason}", node.start_mark) from None


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.yaml_constructors = {
    tag: constructor for tag, constructor in yaml.SafeLoader.yaml_constructors.items()
    if tag not in {f"tag:yaml.org,2002:{t}" for t in _DROPPED_TAGS}
}


def read_yaml_file(path: Path) -> Any:
    """The data in `path`; raises `YamlFileError` for anything that is not a small, valid YAML file."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise YamlFileError([("", f"cannot read file: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise YamlFileError([("", f"the file is larger than {MAX_FILE_BYTES >> 10} KiB, the most a pipeline "
                                  "file may be (a pipeline is a few KiB; is this the right file?)")])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise YamlFileError([(f"line {line}", f"not UTF-8 text: byte 0x{data[exc.start]:02x} at column "
                                              f"{column} (save the file as UTF-8)")]) from None
    return parse_yaml(text)


def parse_yaml(text: str) -> Any:
    loader = None
    try:
        loader = _Loader(text)  # the reader refuses control characters right here
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _tree_problems(loader, node)
        if problems:
            raise YamlFileError(problems)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        raise YamlFileError([_marked(exc)]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlFileError([(f"line {line}", f"not valid YAML: character U+{exc.character:04X} is not allowed "
                                              "(a binary file, or control characters in the text?)")]) from None
    except yaml.YAMLError as exc:
        raise YamlFileError([("", f"not valid YAML: {_one_line(str(exc))}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _tree_problems(loader: _Loader, root: Node) -> list[tuple[str, str]]:
    """Duplicate keys (with the path of their mapping), and depth and size after aliases expand.

    Walks every path, so an aliased node counts each time it is used; the walk stops at
    MAX_VALUES steps, so it is bounded even for alias bombs and self-referencing aliases."""
    problems: list[tuple[str, str]] = []
    checked: set[int] = set()  # mappings whose keys were compared (a node reached twice is one mapping)
    stack: list[tuple[Node, str, int]] = [(root, "", 1)]
    values = 0
    while stack:
        node, path, depth = stack.pop()
        values += 1
        if values > MAX_VALUES:
            return [(_line(node), f"the file expands to more than {MAX_VALUES} values (YAML aliases "
                                  "repeating each other?)")]
        if depth > MAX_DEPTH:
            shown = path if len(path) <= 80 else path[:77] + "..."
            return [(_line(node), f"nested more than {MAX_DEPTH} levels deep at {shown} (a YAML alias that "
                                  "refers to itself?)")]
        if isinstance(node, SequenceNode):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node.value))
        elif isinstance(node, MappingNode):
            if id(node) not in checked:
                checked.add(id(node))
                problems += _duplicate_keys(loader, node, path)
            for key, value in node.value:
                stack.append((value, _join(path, key), depth + 1))
    return problems


def _duplicate_keys(loader: _Loader, node: MappingNode, path: str) -> list[tuple[str, str]]:
    first_line: dict[Any, int] = {}
    problems = []
    for key, _ in node.value:
        if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:  # merged keys may be overridden
            continue
        value = loader.construct_object(key)
        try:
            seen = first_line.get(value)
        except TypeError:  # unhashable: construct_document reports it
            continue
        where = f"in {path}" if path else "at the top level"
        if seen is not None:
            problems.append((_line(key), f"duplicate key {value!r} {where} (first at line {seen}; YAML "
                                         "allows a key once per mapping)"))
        else:
            first_line[value] = key.start_mark.line + 1
    return problems


def _join(path: str, key: Node) -> str:
    name = key.value if isinstance(key, ScalarNode) else "?"
    if name.isidentifier() or (name and all(c.isalnum() or c in "-_" for c in name)):
        return f"{path}.{name}" if path else name
    return f"{path}[{name!r}]"


def _line(node: Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _marked(exc: yaml.MarkedYAMLError) -> tuple[str, str]:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}" if mark is not None else ""
    reason = _one_line(exc.problem or exc.context or "")
    if exc.context and exc.problem and exc.context_mark is not None:
        reason += f" ({_one_line(exc.context)} at line {exc.context_mark.line + 1})"
    if isinstance(exc, ConstructorError) and reason.startswith(("nested more", "cannot read")):
        return where, reason
    return where, f"not valid YAML: {reason}"


def _one_line(text: str) -> str:
    return " ".join(text.split())
