"""A layered drawing of the pipeline graph: longest-path layers left to right, cycles allowed.

Computed here (not in the browser) so it is tested with the rest of the Python code; the page
only draws the boxes and curves it is given."""

from __future__ import annotations

from itertools import pairwise

from pydantic import BaseModel, ConfigDict, Field

from framework.spec import Pipeline

ROWS = {"source": 3, "udf": 6, "reduce": 7, "sink": 5}  # must match ROWS in static/app.js
NODE_W, NODE_H = 200, 34 + 15 * max(ROWS.values())  # NODE_H: the slot; a box is as tall as the numbers it shows
GAP_X, GAP_Y, MARGIN = 110, 36, 24


class Box(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    name: str
    kind: str
    reduce: bool = False  # a reduce box also shows what it holds in open windows
    layer: int
    x: int
    y: int
    w: int = NODE_W
    h: int = NODE_H


class Line(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    to: str
    back: bool = False  # closes a cycle: drawn as a loop instead of a forward curve
    tags: str | None = None  # the edge's condition, e.g. "or(positive)"
    fused: bool = False  # inside a fused chain: no buffer, both ends in one process


class Layout(BaseModel):
    nodes: list[Box]
    edges: list[Line]
    width: int
    height: int


def _back_edges(p: Pipeline) -> set[tuple[str, str]]:
    """Edges that close a cycle in a DFS from the sources (then from anything unvisited)."""
    succ: dict[str, list[str]] = {v.name: [] for v in p.spec.vertices}
    for e in p.spec.edges:
        succ[e.from_].append(e.to)
    state: dict[str, int] = {}  # 1 = on the DFS stack, 2 = done
    back: set[tuple[str, str]] = set()
    roots = [v.name for v in p.spec.vertices if v.kind == "source"] + [v.name for v in p.spec.vertices]
    for root in roots:
        if root in state:
            continue
        stack = [(root, iter(succ[root]))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(succ[nxt])))
    return back


def _layers(p: Pipeline, back: set[tuple[str, str]]) -> dict[str, int]:
    """Longest path from any root over the acyclic (forward) edges."""
    forward = [(e.from_, e.to) for e in p.spec.edges if (e.from_, e.to) not in back]
    layer = {v.name: 0 for v in p.spec.vertices}
    for _ in range(len(layer)):  # at most |V| relaxations on a DAG
        changed = False
        for a, b in forward:
            if layer[b] < layer[a] + 1:
                layer[b], changed = layer[a] + 1, True
        if not changed:
            break
    return layer


def _order(p: Pipeline, layer: dict[str, int]) -> list[list[str]]:
    """Vertices per layer, sorted by the mean position of their predecessors (fewer crossings)."""
    columns: list[list[str]] = [[] for _ in range(max(layer.values()) + 1)]
    for v in p.spec.vertices:
        columns[layer[v.name]].append(v.name)
    position: dict[str, float] = {n: i for i, n in enumerate(columns[0])}
    for col in columns[1:]:
        def key(name: str) -> float:
            preds = [position[e.from_] for e in p.in_edges(name)
                     if e.from_ in position and layer[e.from_] < layer[name]]
            return sum(preds) / len(preds) if preds else 0.0

        col.sort(key=key)  # stable: ties keep file order
        position.update({n: i for i, n in enumerate(col)})
    return columns


def layout(p: Pipeline) -> Layout:
    back = _back_edges(p)
    layer = _layers(p, back)
    columns = _order(p, layer)
    tallest = max(len(c) for c in columns)
    height = 2 * MARGIN + tallest * NODE_H + (tallest - 1) * GAP_Y
    boxes = []
    for i, col in enumerate(columns):
        used = len(col) * NODE_H + (len(col) - 1) * GAP_Y
        top = (height - used) // 2  # centre each column vertically
        for j, name in enumerate(col):
            v = p.vertex(name)
            reduce = v.udf is not None and v.udf.windowing is not None
            h = 34 + 15 * ROWS["reduce" if reduce else v.kind]
            boxes.append(Box(name=name, kind=v.kind, reduce=reduce, layer=i, x=MARGIN + i * (NODE_W + GAP_X),
                             y=top + j * (NODE_H + GAP_Y) + (NODE_H - h) // 2, h=h))
    lines = []
    inside = {pair for chain in p.chains() for pair in pairwise(chain)}
    for e in p.spec.edges:
        tags = None
        if e.conditions and e.conditions.tags:
            tags = f"{e.conditions.tags.operator.value}({', '.join(e.conditions.tags.values)})"
        lines.append(Line(from_=e.from_, to=e.to, back=(e.from_, e.to) in back or layer[e.to] <= layer[e.from_],
                          tags=tags, fused=(e.from_, e.to) in inside))
    width = 2 * MARGIN + len(columns) * NODE_W + (len(columns) - 1) * GAP_X
    # Back edges loop below the graph: leave them room.
    if any(line.back for line in lines):
        height += 2 * GAP_Y
    return Layout(nodes=boxes, edges=lines, width=width, height=height)
