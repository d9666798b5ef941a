"""Event-time windows: which windows a message belongs to, and session merging."""

from __future__ import annotations

from dataclasses import dataclass, field

from framework.spec import WindowSpec


@dataclass
class OpenWindow:
    keys: tuple[str, ...]
    start: int  # epoch ms, inclusive
    end: int  # epoch ms, exclusive
    items: list = field(default_factory=list)  # (Datum, Msg) in arrival order


def assign(spec: WindowSpec, et: int) -> list[tuple[int, int]]:
    """The [start, end) windows (epoch ms) an event time falls in, for fixed and sliding windows."""
    if spec.fixed is not None:
        length = int(spec.fixed.length * 1000)
        start = et - et % length
        return [(start, start + length)]
    if spec.sliding is not None:
        length, slide = int(spec.sliding.length * 1000), int(spec.sliding.slide * 1000)
        start = et - et % slide
        out = []
        while start > et - length:
            out.append((start, start + length))
            start -= slide
        return sorted(out)
    raise ValueError("session windows are merged per key, not assigned")


def add_to_sessions(sessions: list[OpenWindow], keys: tuple[str, ...], et: int, timeout_ms: int,
                    item) -> OpenWindow:
    """Put an item into its key's sessions: a session is [first event, last event + timeout);
    an event within `timeout` of a session joins it, and sessions it bridges are merged."""
    lo, hi = et, et + timeout_ms
    touching = [s for s in sessions if s.start <= hi and lo <= s.end]
    merged = OpenWindow(keys, min([lo] + [s.start for s in touching]), max([hi] + [s.end for s in touching]))
    for s in touching:
        merged.items.extend(s.items)
        sessions.remove(s)
    merged.items.append(item)
    sessions.append(merged)
    return merged
