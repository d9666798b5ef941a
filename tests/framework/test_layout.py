"""The shape of the code, checked: module size, no import cycles, and the seams the redesign drew
(ack tokens, stream and header names in isb/ only; nats-py internals in transport/ only)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FRAMEWORK = REPO / "framework"
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in FRAMEWORK.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(path: Path, known: set[str]) -> set[str]:
    """framework modules `path` imports, at any depth except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("framework"):
                found.add(name)
    return found


def test_no_module_is_over_400_lines() -> None:
    big = {str(p.relative_to(REPO)): n for p in FRAMEWORK.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def test_no_import_cycle() -> None:
    mods = modules()
    graph = {m: imported(p, set(mods)) - {m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how a curated __all__ is built, not a cycle
    for m in graph:
        graph[m] = {d for d in graph[m] if not (d.startswith(m + ".") and mods[m].name == "__init__.py")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def _files_with(pattern: str, *, outside: tuple[str, ...]) -> list[str]:
    rx = re.compile(pattern)
    hits = []
    for path in [*FRAMEWORK.rglob("*.py"), *(REPO / "vertices").rglob("*.py")]:
        rel = str(path.relative_to(REPO))
        if rel.startswith(outside):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if rx.search(line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    return hits


def test_ack_tokens_only_in_isb() -> None:
    assert _files_with(r"b?[\"'](\+ACK|-NAK|\+WPI|\+TERM)", outside=("framework/isb/",)) == []


def test_header_names_only_in_isb() -> None:
    assert _files_with(r"[\"'](Nf-[A-Z][\w-]*|Nats-Msg-Id|Nats-Expected[\w-]*)[\"']",
                       outside=("framework/isb/",)) == []


def test_stream_names_only_in_isb() -> None:
    assert _files_with(r"f[\"']nf(dlq)?[._]\{|[\"']nf_[\"']", outside=("framework/isb/",)) == []


def test_nats_py_internals_only_in_transport() -> None:
    private = r"\._(parse_header_lines|process_msg|send_command|flush_queue|subs|pending_data_size|ps|ssid)\b"
    assert _files_with(private, outside=("framework/transport/",)) == []
