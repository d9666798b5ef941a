"""The conformance kit's rules: what it observed of a vertex under test, and the checks over it
(pure: the kit's scenarios in conformance.py do the I/O)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from framework.isb import envelope
from framework.transport.headers import header_problem

VUT = "vut"
OUT_EDGES = ("all", "tagged", "untagged")
BAD_EVERY = 997  # every 997th input carries an invalid Nf-Keys header: it must be dead-lettered
BARE_EVERY = 499  # every 499th has no Nf-Event-Time and no Nf-Id: its outputs take the store time and msg id
HDR_PROBE = "X-Conformance"
ENVELOPE_RULE = "envelope: Nf-Id, Nf-Event-Time, Nf-Keys and user headers carried"
DEAD_LETTER_RULE = "a bad message (invalid Nf-Keys) is dead-lettered with Nf-Error, then acked"
WATERMARK_RULE = "publishes watermarks (SHOULD; needed only upstream of a reduce) with valid values"


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
    seq: int = 0  # its stream sequence, when read from the stream


@dataclass
class Observation:
    """What one scenario saw: inputs by origin (docs/protocol.md §5), every output, every dead letter."""

    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # origin -> {id, event_time, probe, bad, seq}
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
                whose = "(the input has none) its store time" if src.get("bare") else "the input's"
                problems.append(f"{o.msg_id}: Nf-Event-Time {o.headers.get(envelope.HDR_EVENT_TIME)!r}, "
                                f"expected {whose} {src['event_time']}")
            problems.extend(f"{o.msg_id}: {p}" for k, v in o.headers.items() if (p := header_problem(k, v)))
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
        self.record(ENVELOPE_RULE,
                     not problems and outs > 0,
                     f"{outs} outputs checked" if not problems else f"{len(problems)} problems, e.g. {problems[:3]}")

    @property
    def routing_rule(self) -> str:
        return f"routing by tags: `or [{self.tag}]` and `not [{self.tag}]` split the unconditional edge"

    def check_routing(self, obs: Observation) -> None:
        ids = {e: [o.msg_id for o in obs.outputs if o.edge == e] for e in OUT_EDGES}
        every, tagged, untagged = (set(ids[e]) for e in OUT_EDGES)
        dup = {e: len(v) - len(set(v)) for e, v in ids.items()}
        ok = tagged | untagged == every and not (tagged & untagged) and not any(dup.values())
        self.record(self.routing_rule,
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
        self.record(DEAD_LETTER_RULE, ok,
                     f"{len(got)}/{len(bad)} dead-lettered, e.g. Nf-Error {sample[:80]!r}" if ok
                     else f"expected dlq:{VUT}:<origin> for {sorted(bad)[:5]}, got {sorted(got)[:5]}; "
                          f"{len(leaked)} produced outputs")

    def check_acked_were_stored(self, ref: Observation, obs: Observation, waiting: set[str],
                                stored: set[str], stalled: bool, cap: int) -> None:
        """Every input no longer `waiting` (unacked) upstream has all its reference outputs to
        `all` among the `stored` msg ids: it was acked only after their PubAcks (§4.3, §4.4)."""
        outputs_of = ref.by_input()
        acked = [s for s in obs.inputs if s not in waiting]
        lost = [f"{VUT}:{s}:{i}" for s in acked for i, _data, edge in outputs_of.get(obs.inputs[s]["id"], [])
                if edge == "all" and f"{VUT}:{s}:{i}" not in stored]
        ok = stalled and not lost
        self.record("acks an input only after its publishes are stored (PubAck), even when the server refuses "
                    "them", ok,
                    f"`all` capped at {cap} messages: {len(acked)} inputs acked, {len(waiting)} waiting, "
                    f"{len(lost)} outputs of acked inputs refused and never stored (e.g. {lost[:3]})"
                    + ("" if stalled else "; `all` never filled up"))

    def run_check(self, rule: str, check: Callable[[], None]) -> None:
        """`check()`, or a FAIL row for `rule` when what the vertex wrote cannot even be checked:
        the kit reports a vertex, it never crashes on one."""
        try:
            check()
        except Exception as exc:  # anything a vertex's bytes make a check raise
            self.record(rule, False, f"could not be checked: {type(exc).__name__}: {exc}")

    def check_watermarks(self, entries: dict[str, bytes], obs: Observation, last_seq: dict[str, int],
                         input_wm: int, since_ms: int) -> None:
        """Watermark entries (docs/protocol.md §9) are SHOULD; those published must hold: key
        `vut.<to>.0.<replica>`, value {wm, seq, ts} integers, wm -1 (unknown) or an event time no
        later than the input watermark the kit published, seq a sequence of that buffer, ts a
        recent clock, and every output stored after seq with an event time >= wm."""
        rule = WATERMARK_RULE
        if not entries:
            self.record(rule, None, "none published")
            return
        problems: list[str] = []
        for key, raw in entries.items():
            m = re.fullmatch(rf"{VUT}\.({'|'.join(OUT_EDGES)})\.0\.([^.]+)", key)
            if m is None:
                problems.append(f"key {key!r} is not {VUT}.<to>.0.<replica id>")
                continue
            try:
                value = json.loads(raw)
                wm, seq, ts = (value[f] for f in ("wm", "seq", "ts"))
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"{key}: value {raw[:100]!r} is not {{wm, seq, ts}} JSON ({exc!r})")
                continue
            if not all(type(x) is int for x in (wm, seq, ts)):
                problems.append(f"{key}: wm, seq and ts must be integers, got {value}")
                continue
            if not (wm == -1 or 0 <= wm <= input_wm):
                problems.append(f"{key}: wm {wm} is neither -1 nor an event time up to the input watermark {input_wm}")
            if not 0 <= seq <= last_seq[m.group(1)]:
                problems.append(f"{key}: seq {seq} is not a sequence of its buffer (last {last_seq[m.group(1)]})")
            if not since_ms <= ts <= time.time() * 1000 + 5000:
                problems.append(f"{key}: ts {ts} is not a clock reading of this run (epoch ms)")
            early = [o.msg_id for o in obs.outputs if o.edge == m.group(1) and o.seq > seq
                     and o.headers.get(envelope.HDR_EVENT_TIME, "").lstrip("-").isdigit()
                     and int(o.headers[envelope.HDR_EVENT_TIME]) < wm]
            if early:
                problems.append(f"{key}: {len(early)} outputs after seq {seq} are earlier than wm {wm} "
                                f"(e.g. {early[:2]})")
        self.record(rule, not problems, f"{len(entries)} KV entries checked" if not problems
                    else f"{len(problems)} problems, e.g. {problems[:3]}")

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
