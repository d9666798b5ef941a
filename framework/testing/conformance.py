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
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NoKeysError

from framework.isb import envelope, names, provision
from framework.local import process
from framework.local.embedded import EmbeddedNats
from framework.local.replicas import vertex_command
from framework.spec import Pipeline, load_pipeline
from framework.testing.inputs import conformance_pipeline, event_time_of, feed, store_times
from framework.testing.rules import (
    DEAD_LETTER_RULE,
    ENVELOPE_RULE,
    OUT_EDGES,
    VUT,
    WATERMARK_RULE,
    Observation,
    Output,
    RuleBook,
    RuleResult,
    origin_of,
)
from framework.testing.streams import messages, read_stream, set_max_msgs, stalls, until
from framework.testing.vut import VertexUnderTest
from framework.transport.client import FastClient
from framework.watermark.marks import bucket_name


class ConformanceKit:
    """Runs the scenarios against one vertex program and returns one result per rule."""

    def __init__(self, *, command: list[str] | None = None, handler: str | None = None, tag: str = "even",
                 messages: int = 3000, grace: float = 10.0, workdir: Path | None = None,
                 env: dict[str, str] | None = None, progress: Callable[[str], None] | None = None):
        if (command is None) == (handler is None):
            raise ValueError("give exactly one of command or handler")
        self.command, self.handler, self.tag = command, handler, tag
        self.messages, self.grace = messages, grace
        self.input_wm = event_time_of(messages - 1)  # the last event time fed
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="natsflow-conformance-"))
        self.extra_env = env or {}
        self.progress = progress or (lambda _msg: None)
        self.rules = RuleBook(tag, self.progress)
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

    async def _consumer(self, js: JetStreamContext, p: Pipeline) -> Any:
        return await js.consumer_info(names.stream_name(p.name, VUT), names.consumer_name(p.name, VUT))

    async def _input_done(self, js: JetStreamContext, p: Pipeline) -> bool:
        return await messages(js, names.stream_name(p.name, VUT)) == 0

    async def _collect(self, js: JetStreamContext, p: Pipeline, obs: Observation) -> None:
        for edge in OUT_EDGES:
            await read_stream(js, names.stream_name(p.name, edge), edge, obs.outputs)
        await read_stream(js, names.dlq_stream_name(p.name, VUT), "dlq", obs.dead)

    # ---- scenarios ---------------------------------------------------------------------------

    async def run(self) -> list[RuleResult]:
        server = EmbeddedNats(self.workdir / "nats").start()
        self.url = server.url
        try:
            # FastClient: its header parser keeps bytes that are not UTF-8 visible (and never fails).
            self._nc = FastClient()
            await self._nc.connect(self.url, name="natsflow-conformance")
            try:
                reference = await self._reference()
                if reference is not None:
                    await self._sigkill(reference)
                    await self._sigterm(reference)
                    await self._back_pressure(reference)
                    await self._refused_publish(reference)
            finally:
                await self._nc.close()
        finally:
            server.stop()
        return self.rules.results

    async def _reference(self) -> Observation | None:
        self.progress("scenario 1: reference run")
        js = self._nc.jetstream()
        p, vut = await self._setup(self._nc)
        obs = Observation()
        stop_wm = asyncio.Event()
        # Fed before the vertex starts, so the store times of bare inputs can still be read.
        await feed(js, p, obs, 0, self.messages)
        await store_times(js, p, obs)
        await vut.start()
        try:
            info = await until(lambda: self._pulling(js, p, vut), 20)
            self.rules.record("starts from NATSFLOW_DESCRIPTOR and pulls its consumer", bool(info),
                         "pull requests seen on the durable consumer" if info
                         else f"no pull request within 20 s; log:\n{vut.log_tail()}")
            if not info:
                return None
            since_ms = int(time.time() * 1000) - 60_000
            input_wm = asyncio.create_task(self._input_watermark(js, p, stop_wm))
            done = await until(lambda: self._input_done(js, p), 60)
            self.rules.record("acks every input (after processing it)", done,
                         f"{len(obs.inputs)} inputs acked" if done else
                         f"input buffer not empty after 60 s; log:\n{vut.log_tail()}")
            code, took = await vut.terminate(self.grace)
            stop_wm.set()
            await input_wm
            self.rules.record("exits 0 on SIGTERM when idle, within the grace period", code == 0,
                         f"exit code {code} after {took:.2f}s (grace {self.grace:.0f}s)")
            await self._collect(js, p, obs)
            self.rules.run_check(ENVELOPE_RULE,
                                 lambda: self.rules.check_envelope(obs))
            self.rules.run_check(self.rules.routing_rule, lambda: self.rules.check_routing(obs))
            self.rules.run_check(DEAD_LETTER_RULE, lambda: self.rules.check_dead_letters(obs))
            await self._check_watermarks(js, p, obs, since_ms)
            return obs
        finally:
            stop_wm.set()
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
            self.rules.record("exits 0 on SIGTERM mid-stream, within the grace period", code == 0,
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
            await feed(js, p, obs, 0, self.messages)
            await until(lambda: self._written(js, p, self.messages // 4), 30, interval=0.005)
            context = await interrupt(vut, (await self._consumer(js, p)).num_ack_pending)
            await vut.start()
            done = await until(lambda: self._input_done(js, p), 60)
            await vut.terminate(self.grace)
            await self._collect(js, p, obs)
            self.rules.compare(rule, ref, obs, done, context)
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
            await feed(js, p, obs, 0, self.messages)
            all_stream = names.stream_name(p.name, "all")
            # Nobody reads `all`: the vertex must stop writing near the soft limit and wait.
            stalled = await stalls(js, all_stream)
            peak = (await js.stream_info(all_stream)).state.messages
            pending = (await js.stream_info(names.stream_name(p.name, VUT))).state.messages
            ok = stalled and peak <= soft + slack and pending > 0
            self.rules.record("waits at a full buffer (soft limit) instead of overfilling it", ok,
                         f"`all` held {peak} (soft limit {soft}, one batch of slack {slack}); "
                         f"{pending} inputs still waiting upstream")
            # Now play the downstream reader: take and ack what arrives until the input is done.
            done = await self._drain_all(js, p, obs)
            await vut.terminate(self.grace)
            await self._collect(js, p, obs)
            self.rules.compare("full buffer released: no loss, no duplicates", ref, obs, done, "")
        finally:
            await vut.stop()

    async def _refused_publish(self, ref: Observation) -> None:
        """The server refuses publishes the vertex already sent: `all` is cut to a few messages
        (`discard: new`) while the descriptor's soft limit still says there is room. An input
        acked with an output refused is lost; a vertex that waits for every PubAck (§4.3) is not."""
        self.progress("scenario 5: the server refuses publishes (a stream at max_msgs)")
        js = self._nc.jetstream()
        p, vut = await self._setup(self._nc)
        all_stream, in_stream = names.stream_name(p.name, "all"), names.stream_name(p.name, VUT)
        cap = max(1, self.messages // 5)
        await set_max_msgs(js, all_stream, cap)
        obs = Observation()
        await vut.start()
        try:
            await until(lambda: self._pulling(js, p, vut), 20)
            await feed(js, p, obs, 0, self.messages)
            stalled = await stalls(js, all_stream)
            # Read what is still unacked upstream first: `all` only grows meanwhile.
            waiting: list[Output] = []
            await read_stream(js, in_stream, "in", waiting)
            stored: list[Output] = []
            await read_stream(js, all_stream, "all", stored)
            self.rules.check_acked_were_stored(ref, obs, {origin_of(w.msg_id) for w in waiting},
                                               {o.msg_id for o in stored}, stalled, cap)
            await set_max_msgs(js, all_stream, -1)
            done = await until(lambda: self._input_done(js, p), 60)
            await vut.terminate(self.grace)
            await self._collect(js, p, obs)
            self.rules.compare("publishes refused, then accepted: no loss, no duplicates", ref, obs, done, "")
        finally:
            await vut.stop()

    # ---- helpers for scenarios ---------------------------------------------------------------

    async def _written(self, js: JetStreamContext, p: Pipeline, n: int) -> bool:
        info = await js.stream_info(names.stream_name(p.name, "all"))
        return info.state.last_seq >= n

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
                    msg_id, data_id = h.get(envelope.HDR_MSG_ID, ""), h.get(envelope.HDR_ID, "")
                    obs.outputs.append(Output("all", msg_id, data_id, m.data, h))
                    await m.ack_sync()
                if not msgs and await self._input_done(js, p):
                    info = await js.stream_info(names.stream_name(p.name, "all"))
                    if info.state.messages == 0:
                        return True
            return False
        finally:
            await sub.unsubscribe()

    # ---- checks ------------------------------------------------------------------------------

    async def _input_watermark(self, js: JetStreamContext, p: Pipeline, stop: asyncio.Event) -> None:
        """Play `feed`'s watermark publisher (§9) while the reference run lasts: everything is fed, so
        the last event time fed holds for whatever comes after the buffer's last sequence."""
        kv = await js.key_value(bucket_name(p.name))
        while not stop.is_set():
            last = (await js.stream_info(names.stream_name(p.name, VUT))).state.last_seq
            await kv.put(f"feed.{VUT}.0.kit", json.dumps({"wm": self.input_wm, "seq": last,
                                                          "ts": int(time.time() * 1000)}).encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    async def _check_watermarks(self, js: JetStreamContext, p: Pipeline, obs: Observation, since_ms: int) -> None:
        kv = await js.key_value(bucket_name(p.name))
        try:
            keys = [k for k in await kv.keys() if k.startswith(f"{VUT}.")]
        except NoKeysError:
            keys = []
        entries = {}
        for k in keys:
            entry = await kv.get(k)
            entries[k] = entry.value or b""
        last_seq = {edge: (await js.stream_info(names.stream_name(p.name, edge))).state.last_seq for edge in OUT_EDGES}
        self.rules.run_check(WATERMARK_RULE,
                             lambda: self.rules.check_watermarks(entries, obs, last_seq, self.input_wm, since_ms))

def run_conformance(**kwargs: Any) -> tuple[list[RuleResult], bool]:
    kit = ConformanceKit(**kwargs)
    try:
        results = asyncio.run(kit.run())
    finally:
        if kwargs.get("workdir") is None and not any(r.ok is False for r in kit.rules.results):
            shutil.rmtree(kit.workdir, ignore_errors=True)
    passed = bool(results) and not any(r.ok is False for r in results)
    return results, passed


if __name__ == "__main__":  # pragma: no cover - `natsflow conformance` is the entry point
    sys.exit("use: natsflow conformance -- CMD ...")
