"""Pause, resume and drain (issue 13, section 2): the phase in JetStream KV, sources that stop
reading within a second of a pause, buffers that drain, and a resume that delivers the rest exactly
once; `natsflow render` with desiredPhase Paused at 0 replicas."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import subprocess
import sys
import time
from datetime import datetime

import pytest
import yaml

from framework.isb.provision import provision
from framework.runtime.phase import PAUSED, RUNNING, read_phase, write_phase
from framework.spec import SpecError, parse_pipeline
from tests.conftest import REPO, wait_for
from tests.framework.test_faults import _read_all
from tests.framework.test_render import CREDENTIALS, objects, render_doc, validate
from tests.framework.test_worker import gen, udf

AT = re.compile(r" at (\S+Z)\)")


def _cli(runner, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", *args, str(runner.file), "--nats-url", runner.url],
                          cwd=REPO, env=runner.env(), capture_output=True, text=True, timeout=timeout)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _logged_at(log: str, text: str) -> float:
    """Epoch seconds of the first log line containing `text` (the CLI's format: local time, ms)."""
    line = next(ln for ln in log.splitlines() if text in ln)
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return time.mktime(stamp.timetuple()) + stamp.microsecond / 1e6


async def _appended(js, stream: str) -> int:
    try:
        return (await js.stream_info(stream)).state.last_seq
    except Exception:  # not created yet (a sink's stream)
        return 0


async def _watch_until_still(js, stream: str, still: float, limit: float, proc=None) -> list[tuple[float, int]]:
    """Samples (wall time, messages appended to `stream`) every 20 ms until the count has not
    moved for `still` seconds (and `proc`, if given, has exited), or `limit` seconds passed."""
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    while time.monotonic() - started < limit:
        samples.append((time.time(), await _appended(js, stream)))
        moved = [t for (t, n), (_, before) in zip(samples[1:], samples) if n != before]
        last_move = moved[-1] if moved else samples[0][0]
        if time.time() - last_move >= still and (proc is None or proc.returncode is not None):
            return samples
        await asyncio.sleep(0.02)
    raise AssertionError(f"{stream} still growing after {limit}s: {samples[-5:]}")


def _stopped_at(samples: list[tuple[float, int]]) -> float:
    """Wall time of the first sample showing the final count (an upper bound of the last write)."""
    final = samples[-1][1]
    return next(t for t, n in samples if n == final)


async def test_pause_stops_sources_within_a_second_and_resume_delivers_the_rest_exactly_once(runner, nc):
    total = 16_000
    out_stream = f"OUT_{runner.name}"
    runner.write([gen("in", total, rpu=200, duration="100ms"), udf("map", "slow_identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], limits={"ackWait": "5s"})
    await runner.start_all(SLOW_MAP_SECONDS="0.001")  # the map falls behind: its buffer has a backlog to drain
    js = nc.jetstream()
    first_buffer = f"nf_{runner.name}_map"  # what the source writes: its output count
    await wait_for(lambda: _at_least(js, out_stream, 1000), 60, "1000 messages at the sink")

    pause = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "framework.cli", "pause", str(runner.file), "--nats-url", runner.url, "--timeout", "60",
        cwd=REPO, env=runner.env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    samples = await _watch_until_still(js, first_buffer, still=2.0, limit=90, proc=pause)
    out, err = await pause.communicate()
    text = out.decode()
    assert pause.returncode == 0, (text, err.decode())
    m = AT.search(text.splitlines()[0])
    assert m and "Paused" in text.splitlines()[0], text
    paused_at = _epoch(m.group(1))
    stop_s = _stopped_at(samples) - paused_at
    drain_s = float(re.search(r"drained \S+ in ([\d.]+)s", text).group(1))
    backlog = int(re.search(r"drain \S+: (\d+) pending", text).group(1))  # at the pause
    written = samples[-1][1]
    seen_s = _logged_at(runner.log("in"), "vertex in: pipeline paused") - paused_at
    assert 0 < written < total, written  # mid-stream
    assert seen_s < 1.0, f"the source saw the pause {seen_s:.2f}s after it was written"
    assert stop_s < 1.0, f"source still wrote {stop_s:.2f}s after the pause"
    assert "pending (" in text, text  # a progress line naming the busy buffers
    assert await runner.drained(nc)
    at_sink = await _appended(js, out_stream)
    assert at_sink == written  # every record the source stored reached the sink, no more
    still = await _watch_until_still(js, out_stream, still=1.5, limit=10)
    assert still[-1][1] == at_sink  # nothing moves while paused
    assert (await read_phase(js, runner.pipeline)).phase == PAUSED

    resume = _cli(runner, "resume")
    assert resume.returncode == 0, resume.stderr
    resumed_at = _epoch(AT.search(resume.stdout).group(1))
    await wait_for(lambda: _at_least(js, first_buffer, written + 1), 30, "the source to write again")
    resume_s = time.time() - resumed_at
    await wait_for(lambda: _at_least(js, out_stream, total), 120, f"{total} messages at the sink")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    assert await _appended(js, first_buffer) == total  # the source stored each record once
    _, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
    seqs = sorted(json.loads(p)["seq"] for p in payloads)
    lost = total - len(set(seqs))
    duplicated = len(seqs) - len(set(seqs))
    print(f"\npause -> seen by the source {seen_s * 1000:.0f} ms, its last write {stop_s * 1000:.0f} ms "
          f"(wrote {written}/{total}); {backlog} in the buffers drained in {drain_s:.1f}s; "
          f"resume -> source writing again within {resume_s * 1000:.0f} ms; lost {lost}, duplicated {duplicated}")
    assert seqs == list(range(total))
    for v in ("in", "map", "out"):
        assert runner.procs[v].poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"


async def _at_least(js, stream: str, n: int) -> bool:
    return await _appended(js, stream) >= n


async def test_drain_reports_progress_and_fails_on_timeout(runner, nc):
    runner.write([gen("in", 1), {"name": "out", "sink": {"blackhole": {}}}], [{"from": "in", "to": "out"}])
    await runner.provision()
    js = nc.jetstream()
    for i in range(5):  # nobody reads them: no worker runs
        await js.publish(f"nf.{runner.name}.out.in", b"x", headers={"Nats-Msg-Id": f"m{i}"})
    stuck = _cli(runner, "drain", "--timeout", "1")
    assert stuck.returncode == 5, (stuck.stdout, stuck.stderr)
    assert "5 pending (out 5)" in stuck.stdout and "not drained after 1s" in stuck.stdout, stuck.stdout
    await js.purge_stream(f"nf_{runner.name}_out")
    done = _cli(runner, "drain", "--timeout", "10")
    assert done.returncode == 0, done.stdout
    assert re.search(r"drained \S+ in [\d.]+s", done.stdout), done.stdout


async def test_the_spec_phase_is_applied_at_provision_and_wins_over_an_earlier_pause(runner, nc):
    runner.write([gen("in", 1), {"name": "out", "sink": {"blackhole": {}}}], [{"from": "in", "to": "out"}])
    js = nc.jetstream()
    await runner.provision()
    assert (await read_phase(js, runner.pipeline)).phase == RUNNING  # nothing stored: the spec's default
    await write_phase(js, runner.pipeline, PAUSED, "someone@host")
    await runner.provision()  # a spec without lifecycle leaves the stored phase alone
    assert (await read_phase(js, runner.pipeline)).by == "someone@host"
    doc = yaml.safe_load(runner.file.read_text())
    doc["spec"]["lifecycle"] = {"desiredPhase": "Running"}
    p = parse_pipeline(doc, file="p.yaml", check_handlers=False)
    done = await provision(js, p)
    assert (f"phase nf_{runner.name}_lifecycle", "updated (Paused -> Running)") in done
    assert (await read_phase(js, p)).phase == RUNNING


def test_lifecycle_spec_fields():
    doc = copy.deepcopy(CREDENTIALS)
    doc["spec"]["lifecycle"] = {"desiredPhase": "Paused", "pauseGracePeriod": "10s"}
    p = parse_pipeline(doc, file="p.yaml", check_handlers=False, env={}, allow_unset=True)
    assert (p.spec.lifecycle.desired_phase, p.spec.lifecycle.pause_grace_period) == ("Paused", 10.0)
    doc["spec"]["lifecycle"] = {"desiredPhase": "Stopped"}
    with pytest.raises(SpecError, match="desiredPhase"):
        parse_pipeline(doc, file="p.yaml", check_handlers=False, env={}, allow_unset=True)


def test_render_paused_gives_zero_replicas_and_running_restores_them():
    paused_doc = copy.deepcopy(CREDENTIALS)
    paused_doc["spec"]["lifecycle"] = {"desiredPhase": "Paused"}
    running, paused = objects(render_doc(CREDENTIALS)), objects(render_doc(paused_doc))
    for obj in paused:
        validate(obj)
    scaled = {o["spec"]["scaleTargetRef"]["name"]: o for o in paused if o["kind"] == "ScaledObject"}
    vertex_deployments = [o for o in paused if o["kind"] == "Deployment" and "sideinputs" not in o["metadata"]["name"]]
    assert len(vertex_deployments) == len(CREDENTIALS["spec"]["vertices"])
    for d in vertex_deployments:
        name = d["metadata"]["name"]
        if name in scaled:  # KEDA owns the count: paused at 0 by its annotation
            assert "replicas" not in d["spec"]
            assert scaled[name]["metadata"]["annotations"] == {"autoscaling.keda.sh/paused-replicas": "0"}
        else:
            assert d["spec"]["replicas"] == 0, name
    assert scaled and any("replicas" in d["spec"] for d in vertex_deployments)
    # Running again: the spec's counts and no annotation, as rendered before the pause
    running_doc = copy.deepcopy(paused_doc)
    running_doc["spec"]["lifecycle"] = {"desiredPhase": "Running"}
    assert _scaling(objects(render_doc(running_doc))) == _scaling(running)
    assert all("annotations" not in o["metadata"] for o in running if o["kind"] == "ScaledObject")


def _scaling(objs: list[dict]) -> dict[str, object]:
    """Replicas of each Deployment and metadata + spec of each ScaledObject, by name."""
    out: dict[str, object] = {}
    for o in objs:
        if o["kind"] == "Deployment":
            out[o["metadata"]["name"]] = o["spec"].get("replicas")
        elif o["kind"] == "ScaledObject":
            out["so/" + o["metadata"]["name"]] = (o["metadata"], o["spec"])
    return out


async def test_an_http_source_answers_503_while_paused(runner, nc):
    from tests.vertices.test_http_source import apost, start_http

    url, out = await start_http(runner, nc)
    assert (await apost(url, b"before", {"X-Natsflow-Id": "a"}))[0] == 200
    assert _cli(runner, "pause", "--no-wait").returncode == 0
    seen = "vertex in: pipeline paused"
    await wait_for(lambda: seen in runner.log("in"), 10, "the source to see the pause")
    status, body = await apost(url, b"during", {"X-Natsflow-Id": "b"})
    assert status == 503 and body["retry"] is True and "paused" in body["error"], body
    assert _cli(runner, "resume").returncode == 0
    await wait_for(lambda: "vertex in: pipeline resumed" in runner.log("in"), 10, "the source to see the resume")
    assert (await apost(url, b"after", {"X-Natsflow-Id": "c"}))[0] == 200
    await out.wait_count(2)
    assert sorted(m.data for m in out.msgs) == [b"after", b"before"]


async def test_a_paused_jetstream_source_leaves_the_rest_upstream(runner, nc):
    total, upstream, out_stream = 6000, f"UP_{runner.name}", f"OUT_{runner.name}"
    js = nc.jetstream()
    await js.add_stream(name=upstream, subjects=[f"{runner.name}.up"])
    for i in range(total):
        await js.publish(f"{runner.name}.up", json.dumps({"seq": i}).encode())
    runner.write([{"name": "in", "source": {"jetstream": {"stream": upstream}}}, udf("map", "slow_identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"readBatchSize": 100, "bufferMaxLength": 1000, "bufferUsageLimit": 100})
    await runner.start_all(SLOW_MAP_SECONDS="0.001")
    await wait_for(lambda: _at_least(js, out_stream, 500), 60, "500 messages at the sink")
    pause = _cli(runner, "pause", "--timeout", "60")
    assert pause.returncode == 0, pause.stdout + pause.stderr
    written = await _appended(js, f"nf_{runner.name}_map")
    assert written < total and await runner.drained(nc)
    still = await _watch_until_still(js, f"nf_{runner.name}_map", still=1.5, limit=10)
    assert still[-1][1] == written
    consumer = await js.consumer_info(upstream, f"nf_{runner.name}_in_src")
    assert consumer.num_pending + consumer.num_ack_pending == total - written  # the rest is still upstream
    assert _cli(runner, "resume").returncode == 0
    await wait_for(lambda: _at_least(js, out_stream, total), 120, f"{total} at the sink")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    _, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
    assert sorted(json.loads(p)["seq"] for p in payloads) == list(range(total))
