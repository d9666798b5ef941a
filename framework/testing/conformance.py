"""`natsflow conformance`: proves that a vertex program, in any language, follows docs/protocol.md.

The kit starts a private nats-server, provisions a small pipeline around the vertex under test
(`feed -> vut -> {all, tagged, untagged}`), writes crafted inputs straight into its buffer, and
reads what it wrote. The vertex's function is a black box: the first scenario records what it
does with every input (the reference run); the fault scenarios (SIGKILL and restart, SIGTERM
mid-stream, a full downstream buffer) must produce exactly the same outputs, each once.
The function must therefore be deterministic for the kit's inputs, which exactly-once needs anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from framework.isb import envelope, names, provision
from framework.local import process
from framework.local.embedded import EmbeddedNats
from framework.local.replicas import vertex_command
from framework.spec import Pipeline, load_pipeline
from framework.watermark.marks import bucket_name

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


def conformance_pipeline(name: str, udf: dict[str, Any], tag: str, *, out_limits: dict | None = None,
                         read_batch: int = 50, ack_wait: float = 5.0) -> dict[str, Any]:
    """The pipeline around the vertex under test. Only `vut` runs; the kit plays every other vertex."""
    sink: dict[str, Any] = {"sink": {"blackhole": {}}}
    return {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"readBatchSize": read_batch, "ackWait": ack_wait},
            "vertices": [
                {"name": "feed", "source": {"nats": {"subject": f"conformance.{name}"}}},
                {"name": VUT, "udf": {**udf, "retry": {"attempts": 2, "interval": 0.01}}},
                {"name": "all", **sink, **({"limits": out_limits} if out_limits else {})},
                {"name": "tagged", **sink},
                {"name": "untagged", **sink},
            ],
            "edges": [
                {"from": "feed", "to": VUT},
                {"from": VUT, "to": "all"},
                {"from": VUT, "to": "tagged", "conditions": {"tags": {"operator": "or", "values": [tag]}}},
                {"from": VUT, "to": "untagged", "conditions": {"tags": {"operator": "not", "values": [tag]}}},
            ],
        },
    }


class VertexUnderTest:
    """The program being checked, started the way `natsflow run` starts a vertex."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path):
        self.cmd, self.env, self.log_path = cmd, env, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns the descriptor
        log.write(f"--- start #{self.starts}: {' '.join(self.cmd)}\n".encode())
        log.flush()
        try:
            self.proc = await process.spawn(self.cmd, env=self.env, stdout=log, stderr=log)
        finally:
            log.close()

    def alive(self) -> bool:
        return process.running(self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            process.kill(self.proc)

    async def terminate(self, grace: float) -> tuple[int | None, float]:
        """SIGTERM; the exit code (None if it outlived `grace` and had to be killed) and seconds taken."""
        assert self.proc is not None
        began = time.monotonic()
        code = await process.aterminate(self.proc, grace)
        return code, time.monotonic() - began

    async def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            await process.akill(self.proc)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])


async def until(cond: Callable[[], Awaitable[Any]], timeout: float, interval: float = 0.02) -> Any:
    """Poll `cond` until truthy; its last value (falsy) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await cond()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(interval)


class ConformanceKit:
    """Runs the scenarios against one vertex program and returns one result per rule."""

    def __init__(self, *, command: list[str] | None = None, handler: str | None = None, tag: str = "even",
                 messages: int = 3000, grace: float = 10.0, workdir: Path | None = None,
                 env: dict[str, str] | None = None, progress: Callable[[str], None] | None = None):
        if (command is None) == (handler is None):
            raise ValueError("give exactly one of command or handler")
        self.command, self.handler, self.tag = command, handler, tag
        self.messages, self.grace = messages, grace
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="natsflow-conformance-"))
        self.extra_env = env or {}
        self.progress = progress or (lambda _msg: None)
        self.results: list[RuleResult] = []
        self._scenario = 0

    # ---- plumbing ----------------------------------------------------------------------------

    def _udf(self) -> dict[str, Any]:
        return {"command": self.command} if self.command else {"map": {"handler": self.handler}}

    async def _setup(self, nc: Client, out_limits: dict | None = None) -> tuple[Pipeline, VertexUnderTest]:
        self._scenario += 1
        name = f"cf{self._scenario}"
        doc = conformance_pipeline(name, self._udf(), self.tag, out_limits=out_limits)
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        p = load_pipeline(path, check_handlers=self.handler is not None)
        await provision.provision(nc.jetstream(), p)
        cmd, extra = vertex_command(p, path, VUT)
        cwd = os.getcwd()
        env = {**os.environ, "NATS_URL": self.url, "PYTHONUNBUFFERED": "1",
               "NATSFLOW_GRACE_SECONDS": str(self.grace),
               "PYTHONPATH": os.pathsep.join(filter(None, [cwd, os.environ.get("PYTHONPATH")])),
               **extra, **self.extra_env}
        env.pop("NATSFLOW_METRICS_PORT", None)
        return p, VertexUnderTest(cmd, env, self.workdir / f"{name}.log")

    async def _feed(self, js: JetStreamContext, p: Pipeline, obs: Observation, start: int, count: int) -> None:
        """Publish inputs `start .. start+count-1` into the vertex's buffer, as an upstream vertex would:
        varied keys, event times, payloads, a user header, and now and then a bad message."""
        subject = names.edge_subject(p.name, VUT, "feed")
        for chunk in range(start, start + count, 200):
            metas, sends = [], []
            for n in range(chunk, min(chunk + 200, start + count)):
                event_ms = 1_700_000_000_000 + n * 10
                headers = envelope.envelope_headers(f"feed:{n}", f"in-{n}", event_ms, [[], ["k1"], ["k1", "k2"]][n % 3],
                                             {HDR_PROBE: f"p{n}"})
                bad = n % BAD_EVERY == BAD_EVERY - 1
                if bad:
                    headers[envelope.HDR_KEYS] = "not-json"
                payload = [f"message {n}".encode(), json.dumps({"n": n, "text": "h\u00e9llo"}).encode(),
                           bytes([n % 256, 0, 255]), b""][n % 4]
                metas.append({"msg_id": f"feed:{n}", "id": f"in-{n}", "event_time": str(event_ms),
                              "probe": f"p{n}", "bad": bad})
                sends.append(js.publish(subject, payload, headers=headers))
            await asyncio.gather(*sends)
            for meta in metas:
                obs.inputs[origin_of(str(meta.pop("msg_id")))] = meta

    async def _consumer(self, js: JetStreamContext, p: Pipeline) -> Any:
        return await js.consumer_info(names.stream_name(p.name, VUT), names.consumer_name(p.name, VUT))

    async def _input_done(self, js: JetStreamContext, p: Pipeline) -> bool:
        info = await js.stream_info(names.stream_name(p.name, VUT))
        return info.state.messages == 0

    async def _read_stream(self, js: JetStreamContext, stream: str, edge: str, into: list[Output]) -> int:
        """Reads every message currently in `stream` (direct get by sequence; nothing is acked)."""
        info = await js.stream_info(stream)
        first, last = info.state.first_seq, info.state.last_seq
        count = 0
        for seq in range(max(first, 1), last + 1):
            try:
                raw = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            h = dict(raw.headers or {})
            into.append(Output(edge, h.get(envelope.HDR_MSG_ID, ""), h.get(envelope.HDR_ID, ""), raw.data or b"", h))
            count += 1
        return count

    async def _collect(self, js: JetStreamContext, p: Pipeline, obs: Observation) -> None:
        for edge in OUT_EDGES:
            await self._read_stream(js, names.stream_name(p.name, edge), edge, obs.outputs)
        await self._read_stream(js, names.dlq_stream_name(p.name, VUT), "dlq", obs.dead)

    def _record(self, rule: str, ok: bool | None, detail: str) -> None:
        self.results.append(RuleResult(rule, ok, detail))
        mark = {True: "pass", False: "FAIL", None: "skip"}[ok]
        self.progress(f"  {mark}: {rule}")

    # ---- scenarios ---------------------------------------------------------------------------

    async def run(self) -> list[RuleResult]:
        server = EmbeddedNats(self.workdir / "nats").start()
        self.url = server.url
        try:
            self._nc = await nats.connect(self.url, name="natsflow-conformance")
            try:
                reference = await self._reference()
                if reference is not None:
                    await self._sigkill(reference)
                    await self._sigterm(reference)
                    await self._back_pressure(reference)
            finally:
                await self._nc.close()
        finally:
            server.stop()
        return self.results

    async def _reference(self) -> Observation | None:
        self.progress("scenario 1: reference run")
        js = self._nc.jetstream()
        p, vut = await self._setup(self._nc)
        obs = Observation()
        await vut.start()
        try:
            info = await until(lambda: self._pulling(js, p, vut), 20)
            self._record("starts from NATSFLOW_DESCRIPTOR and pulls its consumer", bool(info),
                         "pull requests seen on the durable consumer" if info
                         else f"no pull request within 20 s; log:\n{vut.log_tail()}")
            if not info:
                return None
            await self._feed(js, p, obs, 0, self.messages)
            done = await until(lambda: self._input_done(js, p), 60)
            self._record("acks every input (after processing it)", done,
                         f"{len(obs.inputs)} inputs acked" if done else
                         f"input buffer not empty after 60 s; log:\n{vut.log_tail()}")
            code, took = await vut.terminate(self.grace)
            self._record("exits 0 on SIGTERM when idle, within the grace period", code == 0,
                         f"exit code {code} after {took:.2f}s (grace {self.grace:.0f}s)")
            await self._collect(js, p, obs)
            self._check_envelope(obs)
            self._check_routing(obs)
            self._check_dead_letters(obs)
            await self._check_watermarks(js, p)
            return obs
        finally:
            await vut.stop()

    async def _pulling(self, js: JetStreamContext, p: Pipeline, vut: VertexUnderTest) -> bool:
        if not vut.alive():
            return False
        info = await self._consumer(js, p)
        return info.num_waiting > 0 or info.delivered.stream_seq > 0

    async def _sigkill(self, ref: Observation) -> None:
        self.progress("scenario 2: SIGKILL mid-stream, then restart")

        async def kill(vut: VertexUnderTest, in_flight: int) -> str:
            assert vut.proc is not None, "killed before it started"
            await process.akill(vut.proc)
            return f"killed with {in_flight} inputs unacked"

        await self._interrupted(ref, "SIGKILL mid-stream + restart: no loss, no duplicates", kill)

    async def _sigterm(self, ref: Observation) -> None:
        self.progress("scenario 3: SIGTERM mid-stream")

        async def terminate(vut: VertexUnderTest, in_flight: int) -> str:
            code, took = await vut.terminate(self.grace)
            self._record("exits 0 on SIGTERM mid-stream, within the grace period", code == 0,
                         f"exit code {code} after {took:.2f}s with {in_flight} inputs unacked at the signal")
            return ""

        await self._interrupted(ref, "SIGTERM mid-stream + restart: no loss, no duplicates", terminate)

    async def _interrupted(self, ref: Observation, rule: str,
                           interrupt: Callable[[VertexUnderTest, int], Awaitable[str]]) -> None:
        """Feed, `interrupt` the vertex once a quarter of the outputs exist, restart it, and
        compare everything it wrote with the reference run."""
        js = self._nc.jetstream()
        p, vut = await self._setup(self._nc)
        obs = Observation()
        await vut.start()
        try:
            await until(lambda: self._pulling(js, p, vut), 20)
            await self._feed(js, p, obs, 0, self.messages)
            await until(lambda: self._written(js, p, self.messages // 4), 30, interval=0.005)
            context = await interrupt(vut, (await self._consumer(js, p)).num_ack_pending)
            await vut.start()
            done = await until(lambda: self._input_done(js, p), 60)
            await vut.terminate(self.grace)
            await self._collect(js, p, obs)
            self._compare(rule, ref, obs, done, context)
        finally:
            await vut.stop()

    async def _back_pressure(self, ref: Observation) -> None:
        self.progress("scenario 4: a full downstream buffer")
        js = self._nc.jetstream()
        limit = {"bufferMaxLength": 400, "bufferUsageLimit": 50}  # soft limit 200
        p, vut = await self._setup(self._nc, out_limits=limit)
        soft = p.limits_for("all").buffer_soft_limit
        slack = p.limits_for(VUT).read_batch_size
        obs = Observation()
        await vut.start()
        try:
            await until(lambda: self._pulling(js, p, vut), 20)
            await self._feed(js, p, obs, 0, self.messages)
            all_stream = names.stream_name(p.name, "all")
            # Nobody reads `all`: the vertex must stop writing near the soft limit and wait.
            stalled = await self._stalls(js, all_stream)
            peak = (await js.stream_info(all_stream)).state.messages
            pending = (await js.stream_info(names.stream_name(p.name, VUT))).state.messages
            ok = stalled and peak <= soft + slack and pending > 0
            self._record("waits at a full buffer (soft limit) instead of overfilling it", ok,
                         f"`all` held {peak} (soft limit {soft}, one batch of slack {slack}); "
                         f"{pending} inputs still waiting upstream")
            # Now play the downstream reader: take and ack what arrives until the input is done.
            done = await self._drain_all(js, p, obs)
            await vut.terminate(self.grace)
            await self._collect(js, p, obs)
            self._compare("full buffer released: no loss, no duplicates", ref, obs, done, "")
        finally:
            await vut.stop()

    # ---- helpers for scenarios ---------------------------------------------------------------

    async def _written(self, js: JetStreamContext, p: Pipeline, n: int) -> bool:
        info = await js.stream_info(names.stream_name(p.name, "all"))
        return info.state.last_seq >= n

    async def _stalls(self, js: JetStreamContext, stream: str, quiet: float = 1.0,
                      timeout: float = 30.0) -> bool:
        """True once `stream` stops growing for `quiet` seconds while inputs are still waiting."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = (await js.stream_info(stream)).state.messages
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return n > 0
            await asyncio.sleep(0.05)
        return False

    async def _drain_all(self, js: JetStreamContext, p: Pipeline, obs: Observation) -> bool:
        """Consume `all` through its durable consumer (acking, so room appears) until the input is
        done and `all` is empty; what was taken goes into obs.outputs."""
        sub = await js.pull_subscribe_bind(names.consumer_name(p.name, "all"), names.stream_name(p.name, "all"))
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                try:
                    msgs = await sub.fetch(200, timeout=0.2)
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                for m in msgs:
                    h = dict(m.headers or {})
                    obs.outputs.append(Output("all", h.get(envelope.HDR_MSG_ID, ""), h.get(envelope.HDR_ID, ""), m.data, h))
                    await m.ack_sync()
                if not msgs and await self._input_done(js, p):
                    info = await js.stream_info(names.stream_name(p.name, "all"))
                    if info.state.messages == 0:
                        return True
            return False
        finally:
            await sub.unsubscribe()

    # ---- checks ------------------------------------------------------------------------------

    def _check_envelope(self, obs: Observation) -> None:
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
        self._record("Nats-Msg-Id is <vertex>:<input origin>:<output index>",
                     not bad_ids and not gaps and outs > 0,
                     f"{outs} outputs for {len(good)} inputs" if not bad_ids and not gaps and outs
                     else f"{len(bad_ids)} ids not of the form (e.g. {bad_ids[:3]}), "
                          f"{len(gaps)} inputs with non-contiguous indexes, {outs} outputs")
        self._record("envelope: Nf-Id, Nf-Event-Time, Nf-Keys and user headers carried",
                     not problems and outs > 0,
                     f"{outs} outputs checked" if not problems else f"{len(problems)} problems, e.g. {problems[:3]}")

    def _check_routing(self, obs: Observation) -> None:
        ids = {e: [o.msg_id for o in obs.outputs if o.edge == e] for e in OUT_EDGES}
        every, tagged, untagged = (set(ids[e]) for e in OUT_EDGES)
        dup = {e: len(v) - len(set(v)) for e, v in ids.items()}
        ok = tagged | untagged == every and not (tagged & untagged) and not any(dup.values())
        self._record(f"routing by tags: `or [{self.tag}]` and `not [{self.tag}]` split the unconditional edge",
                     ok, f"all {len(every)}, tagged {len(tagged)}, untagged {len(untagged)}, duplicates {dup}")
        if ok and not tagged:
            self._record(f"some output carries the tag {self.tag!r}", None,
                         f"no output was tagged {self.tag!r}: pass --tag with a tag your function sets")

    def _check_dead_letters(self, obs: Observation) -> None:
        bad = {s for s, i in obs.inputs.items() if i["bad"]}
        got = {}
        for d in obs.dead:
            m = re.fullmatch(rf"dlq:{VUT}:([0-9a-f]{{24}})", d.msg_id)
            if m and d.headers.get(envelope.HDR_ERROR):
                got[m.group(1)] = d.headers[envelope.HDR_ERROR]
        leaked = {s for s in bad if any((parse_msg_id(o.msg_id) or ("", 0))[0] == s for o in obs.outputs)}
        ok = bad == set(got) and not leaked and bool(bad)
        sample = next(iter(got.values()), "")
        self._record("a bad message (invalid Nf-Keys) is dead-lettered with Nf-Error, then acked", ok,
                     f"{len(got)}/{len(bad)} dead-lettered, e.g. Nf-Error {sample[:80]!r}" if ok
                     else f"expected dlq:{VUT}:<origin> for {sorted(bad)[:5]}, got {sorted(got)[:5]}; "
                          f"{len(leaked)} produced outputs")

    async def _check_watermarks(self, js: JetStreamContext, p: Pipeline) -> None:
        try:
            kv = await js.key_value(bucket_name(p.name))
            keys = await kv.keys()
        except Exception:  # noqa: BLE001 - no bucket or no keys: the rule is optional
            keys = []
        mine = [k for k in keys if k.startswith(f"{VUT}.")]
        self._record("publishes watermarks (SHOULD; needed only upstream of a reduce)",
                     True if mine else None, f"{len(mine)} KV entries" if mine else "none published")

    def _compare(self, rule: str, ref: Observation, obs: Observation, done: bool, context: str) -> None:
        want, got = ref.by_input(), obs.by_input()
        missing = [k for k in want if k not in got or not set(want[k]) <= set(got[k])]
        extra = [k for k in got if k in want and len(got[k]) > len(want[k])]
        unknown = [k for k in got if k not in want]
        ok = done and not missing and not extra and not unknown
        outputs = sum(1 for v in got.values() for o in v if o[2] == "all")
        detail = (f"{outputs} outputs identical to the reference run"
                  if ok else f"input done: {done}; {len(missing)} inputs lost outputs (e.g. {missing[:3]}), "
                             f"{len(extra)} duplicated, {len(unknown)} unexpected")
        self._record(rule, ok, f"{context}; {detail}" if context else detail)


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


def run_conformance(**kwargs: Any) -> tuple[list[RuleResult], bool]:
    kit = ConformanceKit(**kwargs)
    try:
        results = asyncio.run(kit.run())
    finally:
        if kwargs.get("workdir") is None and not any(r.ok is False for r in kit.results):
            shutil.rmtree(kit.workdir, ignore_errors=True)
    passed = bool(results) and not any(r.ok is False for r in results)
    return results, passed


if __name__ == "__main__":  # pragma: no cover - `natsflow conformance` is the entry point
    sys.exit("use: natsflow conformance -- CMD ...")
