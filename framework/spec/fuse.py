"""Graph rules of fused chains (`spec.fuse` and `edges[].fused`): a chain is a linear run of
vertices joined by edges, without a reduce, a command vertex or side inputs, and a vertex is in
at most one chain. Each rule returns (field path, reason) pairs, like framework/spec/graph.py."""

from __future__ import annotations

from collections import Counter

from framework.spec.model import Pipeline, fused_chains


def fuse_problems(p: Pipeline) -> list[tuple[str, str]]:
    problems = _listed_problems(p)
    if problems:  # the chains cannot be resolved from names that do not hold
        return problems
    index = {v.name: v for v in p.spec.vertices}
    outs = Counter(e.from_ for e in p.spec.edges)
    ins = Counter(e.to for e in p.spec.edges)
    owner: dict[str, str] = {}
    for chain in fused_chains(p):
        where = _where(p, chain)
        for pos, name in enumerate(chain):
            v = index.get(name)
            if v is None:  # an edge to no vertex: reported with the edges
                continue
            if name in owner:
                problems.append((where, f"vertex {name!r} is in more than one fused chain ({owner[name]} and {where})"))
                continue
            owner[name] = where
            if v.udf is not None and v.udf.windowing is not None:
                problems.append((where, f"{name!r} is a reduce: a reduce keeps windows across batches, so it "
                                        "cannot be fused"))
            elif v.udf is not None and v.udf.is_program:
                problems.append((where, f"{name!r} runs its own command (a process of its own), so it cannot "
                                        "be fused"))
            if v.side_inputs:
                problems.append((where, f"{name!r} reads side inputs; a fused vertex cannot (not supported yet)"))
            if pos < len(chain) - 1 and outs[name] != 1:
                problems.append((where, f"{name!r} has {outs[name]} out-edges; every vertex of a fused chain "
                                        "but the last must have exactly one, to the next vertex of the chain"))
            if pos > 0 and ins[name] != 1:
                problems.append((where, f"{name!r} has {ins[name]} in-edges; every vertex of a fused chain "
                                        "but the first must have exactly one, from the previous vertex of the "
                                        "chain"))
    return problems


def _listed_problems(p: Pipeline) -> list[tuple[str, str]]:
    """Names in `spec.fuse` exist, appear once per chain, and follow edges."""
    problems: list[tuple[str, str]] = []
    known = {v.name for v in p.spec.vertices}
    edges = {(e.from_, e.to) for e in p.spec.edges}
    for i, chain in enumerate(p.spec.fuse):
        for j, name in enumerate(chain):
            where = f"spec.fuse[{i}][{j}]"
            if name not in known:
                problems.append((where, f"no vertex named {name!r}"))
            elif name in chain[:j]:
                problems.append((where, f"{name!r} is listed twice in this chain"))
            elif j > 0 and chain[j - 1] in known and (chain[j - 1], name) not in edges:
                problems.append((where, f"no edge from {chain[j - 1]!r} to {name!r}: the vertices of a fused "
                                        "chain follow edges"))
    for j, e in enumerate(p.spec.edges):
        if e.fused and e.from_ == e.to:
            problems.append((f"spec.edges[{j}].fused", f"an edge from {e.from_!r} to itself cannot be fused"))
    return problems


def _where(p: Pipeline, chain: list[str]) -> str:
    """The field that made the chain: the `spec.fuse` entry it grew from, else its first fused edge."""
    for i, listed in enumerate(p.spec.fuse):
        start = chain.index(listed[0]) if listed[0] in chain else -1
        if start >= 0 and chain[start:start + len(listed)] == listed:  # edges may have extended it
            return f"spec.fuse[{i}]"
    for j, e in enumerate(p.spec.edges):
        if e.fused and e.from_ in chain:
            return f"spec.edges[{j}].fused"
    return "spec.fuse"
