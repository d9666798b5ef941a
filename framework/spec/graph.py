"""Graph rules: what a pipeline must satisfy beyond its models (names, edges, cycles, Kubernetes
name lengths, side inputs, and each connector's own `check`). Each returns (field path, reason)
pairs; `graph_problems` runs them all."""

from __future__ import annotations

from collections import Counter

from framework.spec.model import Pipeline
from framework.spec.plan import MANAGER_SUFFIX, upstream_scaled
from framework.spec.registry import Placement
from framework.spec.types import K8S_NAME_MAX


def graph_problems(p: Pipeline) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    vertices = p.spec.vertices
    index: dict[str, int] = {}
    for i, v in enumerate(vertices):
        if v.name in index:
            problems.append((f"spec.vertices[{i}].name", f"duplicate vertex name {v.name!r}"))
        index.setdefault(v.name, i)
    pairs = Counter((e.from_, e.to) for e in p.spec.edges)
    seen: set[tuple[str, str]] = set()
    for j, e in enumerate(p.spec.edges):
        where = f"spec.edges[{j}]"
        for end, name in (("from", e.from_), ("to", e.to)):
            if name not in index:
                problems.append((f"{where}.{end}", f"no vertex named {name!r}"))
        if e.from_ in index and vertices[index[e.from_]].kind == "sink":
            problems.append((f"{where}.from", f"{e.from_!r} is a sink; sinks have no out-edges"))
        if e.to in index and vertices[index[e.to]].kind == "source":
            problems.append((f"{where}.to", f"{e.to!r} is a source; sources have no in-edges"))
        src = vertices[index[e.from_]] if e.from_ in index else None
        if e.late and not (src is not None and src.udf is not None and src.udf.windowing is not None):
            problems.append((f"{where}.late", "only edges from a reduce vertex can take late messages"))
        if e.conditions is not None and src is not None and src.source is not None and src.source.transformer is None:
            # (a source.transformer's tags do route)
            problems.append((f"{where}.conditions", "sources set no tags, so conditions on an edge "
                             "from a source would never route by them; remove them"))
        if pairs[(e.from_, e.to)] > 1 and (e.from_, e.to) in seen:
            problems.append((where, f"duplicate edge from {e.from_!r} to {e.to!r}"))
        seen.add((e.from_, e.to))
    outs = Counter(e.from_ for e in p.spec.edges)
    ins = Counter(e.to for e in p.spec.edges)
    for i, v in enumerate(vertices):
        where = f"spec.vertices[{i}]"
        if v.kind in ("source", "udf") and not outs[v.name]:
            problems.append((where, f"{v.kind} {v.name!r} has no out-edge (orphan vertex)"))
        if v.kind in ("udf", "sink") and not ins[v.name]:
            problems.append((where, f"{v.kind} {v.name!r} has no in-edge (orphan vertex)"))
    for i, v in enumerate(vertices):  # each connector's own rules
        where = f"spec.vertices[{i}]"
        blocks = [(f"{where}.source", v.source), (f"{where}.sink", v.sink)]
        if v.sink is not None:
            blocks.append((f"{where}.sink.fallback", v.sink.fallback))
        for path, block in blocks:
            if block is not None and block.connector.check is not None:
                at = Placement(p.name, v, where, f"{path}.{block.kind}")
                problems += block.connector.check(block.config, at)
    for kind in ("source", "sink"):
        if not any(v.kind == kind for v in vertices):
            problems.append(("spec.vertices", f"a pipeline needs at least one {kind}"))
    return (problems + cycle_problems(p) + kubernetes_name_problems(p) + side_input_problems(p))


def cycle_problems(p: Pipeline) -> list[tuple[str, str]]:
    """A cycle is fine as long as messages can leave it: some sink must be reachable from it.

    Outside cycles every vertex but a sink has an out-edge (else it is an orphan), so only a
    cycle can keep messages inside the pipeline for good."""
    names = [v.name for v in p.spec.vertices]
    known = set(names)
    succ: dict[str, list[str]] = {n: [] for n in names}
    pred: dict[str, list[str]] = {n: [] for n in names}
    for e in p.spec.edges:
        if e.from_ in known and e.to in known:
            succ[e.from_].append(e.to)
            pred[e.to].append(e.from_)
    leaves = [v.name for v in p.spec.vertices if v.kind == "sink"]
    reaches_sink = set(leaves)
    stack = list(leaves)
    while stack:
        for u in pred[stack.pop()]:
            if u not in reaches_sink:
                reaches_sink.add(u)
                stack.append(u)
    trapped = [n for n in names if n not in reaches_sink]
    problems = []
    position = {n: i for i, n in enumerate(names)}
    components = _strong_components(trapped, {n: [m for m in succ[n] if m not in reaches_sink] for n in trapped})
    for members in sorted((sorted(c, key=position.__getitem__) for c in components), key=lambda c: position[c[0]]):
        if len(members) > 1 or members[0] in succ[members[0]]:
            shown = ", ".join(repr(n) for n in members)
            what = f"{shown} feeds only itself" if len(members) == 1 else f"{shown} form a cycle"
            problems.append(("spec.edges", f"{what} with no path to a sink: messages that enter it could never "
                                           "leave the pipeline (add an edge from it to a sink, or break the cycle)"))
    return problems


def _strong_components(nodes: list[str], succ: dict[str, list[str]]) -> list[list[str]]:
    """Kosaraju's algorithm, without recursion (a pipeline may have a thousand vertices)."""
    order: list[str] = []
    seen: set[str] = set()
    for start in nodes:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(succ[start]))]
        while stack:
            node, rest = stack[-1]
            nxt = next((m for m in rest if m not in seen), None)
            if nxt is None:
                stack.pop()
                order.append(node)
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for n in nodes:
        for m in succ[n]:
            pred[m].append(n)
    components: list[list[str]] = []
    assigned: set[str] = set()
    for root in reversed(order):
        if root in assigned:
            continue
        assigned.add(root)
        component, todo = [], [root]
        while todo:
            node = todo.pop()
            component.append(node)
            for m in pred[node]:
                if m not in assigned:
                    assigned.add(m)
                    todo.append(m)
        components.append(component)
    return components


def kubernetes_name_problems(p: Pipeline) -> list[tuple[str, str]]:
    """The names `natsflow render` derives from the pipeline's and the vertices' must fit Kubernetes."""
    problems = []
    # Pipeline-wide objects are `<pipeline>-<suffix>`; the side-input manager's suffix is the longest.
    longest = K8S_NAME_MAX - 1 - len(MANAGER_SUFFIX)
    if len(p.name) > longest:
        problems.append(("metadata.name", f"must be at most {longest} characters (this one has {len(p.name)}), so "
                         f"that '<name>-{MANAGER_SUFFIX}', the longest Kubernetes object name `natsflow render` "
                         f"makes for a pipeline, fits the {K8S_NAME_MAX} characters of a Kubernetes name"))
    for i, v in enumerate(p.spec.vertices):
        suffix = "-scaler" if upstream_scaled(v) else ""
        rendered = f"{p.name}-{v.name}{suffix}"
        if len(rendered) > K8S_NAME_MAX:
            problems.append((f"spec.vertices[{i}].name", f"the Kubernetes object name {rendered!r} would have "
                             f"{len(rendered)} characters; Kubernetes allows {K8S_NAME_MAX}: shorten the vertex "
                             "or the pipeline name"))
    return problems


def side_input_problems(p: Pipeline) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    declared: list[str] = []
    for i, si in enumerate(p.spec.side_inputs):
        if si.name in declared:
            problems.append((f"spec.sideInputs[{i}].name", f"duplicate side input name {si.name!r}"))
        declared.append(si.name)
    known = ", ".join(declared) or "none declared"
    for i, v in enumerate(p.spec.vertices):
        for j, name in enumerate(v.side_inputs):
            where = f"spec.vertices[{i}].sideInputs[{j}]"
            if name not in declared:
                problems.append((where, f"no side input named {name!r} in spec.sideInputs ({known})"))
            elif name in v.side_inputs[:j]:
                problems.append((where, f"side input {name!r} is listed twice"))
        if declared and v.name == "sideinputs-manager":
            problems.append((f"spec.vertices[{i}].name", "'sideinputs-manager' is the side-input manager's "
                             "name (its Deployment); rename the vertex"))
        if v.side_inputs and v.udf is not None and v.udf.is_program:
            problems.append((f"spec.vertices[{i}].sideInputs", "a command vertex cannot read side inputs "
                             "(the subprocess protocol does not carry them)"))
    return problems
