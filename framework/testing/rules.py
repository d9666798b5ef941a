"""The conformance kit's rules: what it observed of a vertex under test, and the checks over it
(pure: the kit's scenarios in conformance.py do the I/O)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from framework.isb import envelope

VUT = "vut"
OUT_EDGES = ("all", "tagged", "untagged")
BAD_EVERY = 997  # every 997th input carries an invalid Nf-Keys header: it must be dead-lettered
HDR_PROBE = "X-Conformance"


@dataclass
class RuleResult:
    rule: str
    ok: bool | None  # None: not applicable / optional and not met (does not fail the run)
    detail: str


@dataclass
class Output:
    edge: str
    msg_id: str
    data_id: str
    data: bytes
    headers: dict[str, str]


@dataclass
class Observation:
    """What one scenario saw: inputs by origin (docs/protocol.md §5), every output, every dead letter."""

    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # origin -> {id, event_time, probe, bad}
    outputs: list[Output] = field(default_factory=list)
    dead: list[Output] = field(default_factory=list)

    def by_input(self) -> dict[str, list[tuple[int, bytes, str]]]:
        """input data id -> sorted (output index, payload, edge); the comparison key across runs."""
        result: dict[str, list[tuple[int, bytes, str]]] = {}
        origin_to_id = {s: i["id"] for s, i in self.inputs.items()}
        for o in self.outputs:
            parsed = parse_msg_id(o.msg_id)
            if parsed is None or parsed[0] not in origin_to_id:
                continue
            result.setdefault(origin_to_id[parsed[0]], []).append((parsed[1], o.data, o.edge))
        return {k: sorted(v) for k, v in result.items()}


def parse_msg_id(msg_id: str) -> tuple[str, int] | None:
    """(input origin, output index) from `<vertex>:<origin>:<index>`."""
    m = re.fullmatch(rf"{VUT}:([0-9a-f]{{24}}):(\d+)", msg_id)
    return (m.group(1), int(m.group(2))) if m else None


def origin_of(msg_id: str) -> str:
    """The origin of an input with this `Nats-Msg-Id` (docs/protocol.md §5)."""
    return hashlib.sha256(msg_id.encode()).hexdigest()[:24]


class RuleBook:
    """The results of one kit run, one per rule, and the checks that add them."""

    def __init__(self, tag: str, progress: Callable[[str], None]):
        self.tag, self.progress = tag, progress
        self.results: list[RuleResult] = []

    def record(self, rule: str, ok: bool | None, detail: str) -> None:
        self.results.append(RuleResult(rule, ok, detail))
        mark = {True: "pass", False: "FAIL", None: "skip"}[ok]
        self.progress(f"  {mark}: {rule}")

    def check_envelope(self, obs: Observation) -> None:
        good = {s: i for s, i in obs.inputs.items() if not i["bad"]}
        bad_ids: list[str] = []
        idx_by_origin: dict[str, list[int]] = {}
        problems: list[str] = []
        for o in (o for o in obs.outputs if o.edge == "all"):
            parsed = parse_msg_id(o.msg_id)
            if parsed is None or parsed[0] not in obs.inputs:
                bad_ids.append(o.msg_id)
                continue
            origin, i = parsed
            idx_by_origin.setdefault(origin, []).append(i)
            src = obs.inputs[origin]
            want_id = src["id"] if i == 0 else o.msg_id
            if o.data_id != want_id:
                problems.append(f"{o.msg_id}: Nf-Id {o.data_id!r}, expected {want_id!r}")
            if o.headers.get(envelope.HDR_EVENT_TIME) != src["event_time"]:
                problems.append(f"{o.msg_id}: Nf-Event-Time {o.headers.get(envelope.HDR_EVENT_TIME)!r}, "
                                f"expected the input's {src['event_time']}")
            if o.headers.get(HDR_PROBE) != src["probe"]:
                problems.append(f"{o.msg_id}: user header {HDR_PROBE} not passed through")
            keys = o.headers.get(envelope.HDR_KEYS)
            if keys is not None:
                try:
                    envelope.decode_keys(keys)
                except ValueError as exc:
                    problems.append(f"{o.msg_id}: {exc}")
        gaps = [s for s, idx in idx_by_origin.items() if sorted(idx) != list(range(len(idx)))]
        outs = sum(len(v) for v in idx_by_origin.values())
        self.record("Nats-Msg-Id is <vertex>:<input origin>:<output index>",
                     not bad_ids and not gaps and outs > 0,
                     f"{outs} outputs for {len(good)} inputs" if not bad_ids and not gaps and outs
                     else f"{len(bad_ids)} ids not of the form (e.g. {bad_ids[:3]}), "
                          f"{len(gaps)} inputs with non-contiguous indexes, {outs} outputs")
        self.record("envelope: Nf-Id, Nf-Event-Time, Nf-Keys and user headers carried",
                     not problems and outs > 0,
                     f"{outs} outputs checked" if not problems else f"{len(problems)} problems, e.g. {problems[:3]}")

    def check_routing(self, obs: Observation) -> None:
        ids = {e: [o.msg_id for o in obs.outputs if o.edge == e] for e in OUT_EDGES}
        every, tagged, untagged = (set(ids[e]) for e in OUT_EDGES)
        dup = {e: len(v) - len(set(v)) for e, v in ids.items()}
        ok = tagged | untagged == every and not (tagged & untagged) and not any(dup.values())
        self.record(f"routing by tags: `or [{self.tag}]` and `not [{self.tag}]` split the unconditional edge",
                     ok, f"all {len(every)}, tagged {len(tagged)}, untagged {len(untagged)}, duplicates {dup}")
        if ok and not tagged:
            self.record(f"some output carries the tag {self.tag!r}", None,
                         f"no output was tagged {self.tag!r}: pass --tag with a tag your function sets")

    def check_dead_letters(self, obs: Observation) -> None:
        bad = {s for s, i in obs.inputs.items() if i["bad"]}
        got = {}
        for d in obs.dead:
            m = re.fullmatch(rf"dlq:{VUT}:([0-9a-f]{{24}})", d.msg_id)
            if m and d.headers.get(envelope.HDR_ERROR):
                got[m.group(1)] = d.headers[envelope.HDR_ERROR]
        leaked = {s for s in bad if any((parse_msg_id(o.msg_id) or ("", 0))[0] == s for o in obs.outputs)}
        ok = bad == set(got) and not leaked and bool(bad)
        sample = next(iter(got.values()), "")
        self.record("a bad message (invalid Nf-Keys) is dead-lettered with Nf-Error, then acked", ok,
                     f"{len(got)}/{len(bad)} dead-lettered, e.g. Nf-Error {sample[:80]!r}" if ok
                     else f"expected dlq:{VUT}:<origin> for {sorted(bad)[:5]}, got {sorted(got)[:5]}; "
                          f"{len(leaked)} produced outputs")

    def compare(self, rule: str, ref: Observation, obs: Observation, done: bool, context: str) -> None:
        want, got = ref.by_input(), obs.by_input()
        missing = [k for k in want if k not in got or not set(want[k]) <= set(got[k])]
        extra = [k for k in got if k in want and len(got[k]) > len(want[k])]
        unknown = [k for k in got if k not in want]
        ok = done and not missing and not extra and not unknown
        outputs = sum(1 for v in got.values() for o in v if o[2] == "all")
        detail = (f"{outputs} outputs identical to the reference run"
                  if ok else f"input done: {done}; {len(missing)} inputs lost outputs (e.g. {missing[:3]}), "
                             f"{len(extra)} duplicated, {len(unknown)} unexpected")
        self.record(rule, ok, f"{context}; {detail}" if context else detail)


def format_table(results: list[RuleResult]) -> str:
    width = max(len(r.rule) for r in results) if results else 10
    lines = [f"{'rule':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    for r in results:
        mark = {True: "pass", False: "FAIL", None: "skip"}[r.ok]
        detail = r.detail.replace("\n", "\n" + " " * (width + 10))
        lines.append(f"{r.rule:<{width}}  {mark:<6}  {detail}")
    failed = sum(1 for r in results if r.ok is False)
    lines.append(f"\n{len(results)} rules: {sum(1 for r in results if r.ok)} passed, {failed} failed, "
                 f"{sum(1 for r in results if r.ok is None)} skipped")
    return "\n".join(lines)
