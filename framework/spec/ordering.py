"""Ordered mode (`spec.ordered: true`): per-key order kept end to end through maps and sinks.

Every buffer of a map or sink is split into partitions (`spec.ordering.partitions`, default the
vertex's `scale.max`); a writer picks the partition by a stable hash of the message's keys, and one
replica at a time reads a partition, holding its lease (framework/runtime/ordered.py). What
ordered mode cannot keep in order is refused here, naming the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from framework.spec.types import MINUTE, Duration, Model, WholeNumber, within, within_seconds

if TYPE_CHECKING:
    from framework.spec.model import Pipeline, Vertex

# Why a kind of vertex is refused in an ordered pipeline (the key is the field that chose the kind).
_UNORDERED = {
    "reduce": "a reduce orders by windows, not by arrival; ordered mode keeps the order of maps and sinks",
    "mapStream": "a mapStream handles a batch's inputs concurrently, so their outputs interleave; "
                 "use map, flatmap or batchMap",
    "command": "a program of its own reads its buffer itself; ordered mode needs the worker's partition leases",
}


class Ordering(Model):
    """How an ordered pipeline partitions its buffers and hands partitions between replicas."""

    partitions: Annotated[WholeNumber, within(1, 256, "each partition is a buffer stream of its own")] | None = \
        Field(None, description="partitions of every map's and sink's buffer (default: the vertex's scale.max)")
    lease_ttl: Annotated[Duration, within_seconds(1, 10 * MINUTE, "a dead replica's partitions wait this long",
                                                  low_why="renewals every ttl/4 must get through")] = Field(
        10.0, description="how long a partition's owner may go silent before another replica takes it over")


def ordered_partitions(p: Pipeline, v: Vertex) -> int:
    """How many partitions the buffer of `v` has in ordered mode (a source has no buffer: 1)."""
    if v.kind == "source":
        return 1
    return p.spec.ordering.partitions or max(1, v.scale.max)


def is_ordered(p: Pipeline, v: Vertex) -> bool:
    """The vertex reads its buffer partition by partition, in stream order."""
    return p.spec.ordered and v.kind != "source"


def ordering_problems(p: Pipeline) -> list[tuple[str, str]]:
    """(field path, reason) for what ordered mode cannot keep in order."""
    if not p.spec.ordered:
        if p.spec.ordering != Ordering():  # (a dumped spec spells out the defaults: they are fine)
            return [("spec.ordering", "has no effect unless spec.ordered is true")]
        return []
    problems = []
    for i, v in enumerate(p.spec.vertices):
        if v.udf is None:
            continue
        kind = v.udf.kind
        if kind == "numaflow" and v.udf.windowing is not None:
            problems.append((f"spec.vertices[{i}].udf.numaflow.reduce", f"not supported with spec.ordered: "
                             f"{_UNORDERED['reduce']}"))
        if kind in _UNORDERED:
            field = "command" if kind == "command" and v.udf.command else \
                "container" if kind == "command" else kind
            problems.append((f"spec.vertices[{i}].udf.{field}", f"not supported with spec.ordered: {_UNORDERED[kind]}"))
    return problems
