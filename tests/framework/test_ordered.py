"""Ordered mode (`spec.ordered: true`): per-key order end to end through a map of two replicas
(each its own process) and a sink, across a SIGKILL of one map replica."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from nats.aio.msg import Msg

from framework.isb import envelope, names
from framework.k8s.render import RenderOptions, render_pipeline
from framework.runtime.ordered import OrderedPartition
from framework.runtime.ownership import Lease
from framework.spec import SpecError, load_pipeline, parse_pipeline, plan
from tests.conftest import wait_for
from tests.framework.test_reduce import assert_one_reader_at_a_time, reading_intervals

KEYS, PER_KEY = 100, 100  # 10,000 messages: key k<i> carries 0..99 in order


def ordered_pipeline(runner, partitions: int, source: dict | None = None) -> None:
    """source (default: jetstream) -> map `echo` (2 replicas) -> udsink `out` recording arrivals, ordered."""
    vertices = [
        {"name": "in", "source": source or {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "echo", "udf": {"map": {"handler": "tests.framework.ordered_udfs:slow_echo"}},
         "scale": {"max": 2}},
        {"name": "out", "sink": {"udsink": {"handler": "tests.framework.ordered_udfs:record_arrivals"}}},
    ]
    edges = [{"from": "in", "to": "echo"}, {"from": "echo", "to": "out"}]
    runner.write(vertices, edges, limits={"ackWait": "2s", "readBatchSize": 50})
    doc = yaml.safe_load(runner.file.read_text())
    doc["spec"]["ordered"] = True
    doc["spec"]["ordering"] = {"partitions": partitions, "leaseTtl": "2s"}
    runner.file.write_text(yaml.safe_dump(doc, sort_keys=False))
    runner.pipeline = load_pipeline(runner.file)


async def owners(nc, pipeline: str, vertex: str) -> dict[int, str]:
    """partition -> replica holding its lease ("" = released) for one vertex."""
    kv = await nc.jetstream().key_value(f"nf_{pipeline}_leases")
    try:
        keys = await kv.keys()
    except Exception:  # no keys yet
        return {}
    return {int(k.rsplit(".", 1)[1]): json.loads((await kv.get(k)).value)["owner"]
            for k in keys if k.startswith(f"{vertex}.p.")}


def order_report(lines: list[str]) -> tuple[int, int, int, set[tuple[str, int]]]:
    """(arrivals, distinct, per-key order violations, the (key, seq) pairs seen) of a sink file: a
    violation is the first arrival of a (key, seq) whose seq is not above every earlier one of its
    key (an arrival seen before is a duplicate: arrivals - distinct counts those)."""
    last: dict[str, int] = {}
    violations = 0
    seen: set[tuple[str, int]] = set()
    for line in lines:
        key, value = line.split(" ", 1)
        seq = json.loads(value)["seq"]
        if (key, seq) in seen:
            continue
        if seq <= last.get(key, -1):
            violations += 1
        last[key] = max(seq, last.get(key, -1))
        seen.add((key, seq))
    return len(lines), len(seen), violations, seen


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
async def test_per_key_order_survives_a_stopped_map_replica(runner, nc, tmp_path: Path, stop: str):
    """10,000 messages, 100 keys x seq 0..99, through a map of 2 replicas on 4 partitions; one
    replica is SIGKILLed while it holds messages (the other takes its partitions over after the
    2 s lease, then waits for what it held) or stopped with SIGTERM (it hands its partitions back).
    The sink gets each message exactly once and every key's seqs in order."""
    began = time.monotonic()
    sink_file = tmp_path / "arrivals.txt"
    js = nc.jetstream()
    await js.add_stream(name=f"SRC_{runner.name}", subjects=[f"{runner.name}.src"])
    ordered_pipeline(runner, partitions=4)
    await runner.provision()
    env = {"ORDERED_SINK_FILE": str(sink_file), "ORDERED_MAP_DELAY": "0.05"}
    runner.start("out", **env)
    runner.start("echo", replica="A", NATSFLOW_REPLICA_ID="A", **env)
    runner.start("echo", replica="B", NATSFLOW_REPLICA_ID="B", **env)
    await wait_for(lambda: _split(nc, runner.name), 30, "A and B to own 2 map partitions each")
    for seq in range(PER_KEY):
        for k in range(KEYS):
            await js.publish(f"{runner.name}.src", json.dumps({"seq": seq}).encode(),
                             headers={"Nf-Keys": json.dumps([f"k{k}"])})
    runner.start("in")

    def arrived() -> int:
        return len(sink_file.read_text().splitlines()) if sink_file.exists() else 0

    await wait_for(lambda: arrived() >= 2000, 60, "2,000 arrivals before the kill")

    async def b_holds() -> int:
        held = 0
        for part, owner in (await owners(nc, runner.name, "echo")).items():
            if owner == "B":
                stream = f"nf_{runner.name}_echo_p{part}"
                held += (await js.consumer_info(stream, stream)).num_ack_pending
        return held

    held = await wait_for(b_holds, 20, "B to hold messages")
    if stop == "SIGKILL":
        runner.kill("echo#B")
        killed = {"B": datetime.now()}
    else:
        assert await runner.terminate("echo#B") == 0
        killed = {}
    killed_at, at_kill = time.monotonic(), arrived()
    await wait_for(lambda: _all_owned_by(nc, runner.name, "A"), 30, "A to take B's partitions over")
    takeover = time.monotonic() - killed_at
    await wait_for(lambda: arrived() >= KEYS * PER_KEY, 120, "10,000 arrivals")
    await wait_for(lambda: _drained(nc, runner), 30, "every buffer partition to drain")
    total, distinct, violations, seen = order_report(sink_file.read_text().splitlines())
    print(f"ordered, {stop}: {total} arrivals, {distinct} distinct, {violations} per-key order violations; "
          f"B held {held} at its stop ({at_kill} arrived before); "
          f"A owned B's partitions {takeover:.1f}s after it; {time.monotonic() - began:.1f}s")
    assert seen == {(f"k{k}", s) for k in range(KEYS) for s in range(PER_KEY)}  # none lost
    assert (total, distinct, violations) == (KEYS * PER_KEY, KEYS * PER_KEY, 0)
    # each partition was read by one replica at a time (from the replicas' logs)
    assert_one_reader_at_a_time(reading_intervals(runner, ["A", "B"], killed, vertex="echo"))
    log_a = runner.log("echo#A")
    if stop == "SIGKILL":
        assert "expired lease of B" in log_a
        # A took B's partitions over and waited for what B held before handing out newer messages
        waited = [int(n) for n in re.findall(r"(\d+) message\(s\) a previous owner held come first", log_a)]
        assert sum(waited) > 0, waited
    else:
        assert "stopped reading (stopping); handed back" in runner.log("echo#B")


async def test_per_key_order_survives_a_nats_server_crash(runner, nc, nats_server, tmp_path: Path):
    """A generator (10,000 messages, 100 keys, `seq` rising) -> the same map of 2 replicas on 4
    partitions -> the recording sink; the nats-server is killed with SIGKILL mid-stream and
    restarted. Every message arrives, and the first arrivals of each key are in order (a sink
    without dedup may see a message again after a server crash: counted, not an order fault)."""
    began = time.monotonic()
    total = KEYS * PER_KEY
    sink_file = tmp_path / "arrivals.txt"
    ordered_pipeline(runner, partitions=4, source={"generator": {"rpu": 1000, "duration": "250ms", "total": total,
                                                                 "keyCount": KEYS}})
    await runner.provision()
    env = {"ORDERED_SINK_FILE": str(sink_file), "ORDERED_MAP_DELAY": "0.01"}
    runner.start("out", **env)
    runner.start("echo", replica="A", NATSFLOW_REPLICA_ID="A", **env)
    runner.start("echo", replica="B", NATSFLOW_REPLICA_ID="B", **env)
    await wait_for(lambda: _split(nc, runner.name), 30, "A and B to own 2 map partitions each")
    runner.start("in")

    def distinct() -> int:
        return len(order_report(sink_file.read_text().splitlines())[3]) if sink_file.exists() else 0

    await wait_for(lambda: distinct() >= 3000, 60, "3,000 arrivals before the crash")
    nats_server.kill()
    at_crash = distinct()
    assert at_crash < total, "the crash came after every message had arrived"
    nats_server.start()
    await wait_for(lambda: distinct() >= total, 180, f"{total} distinct arrivals after the restart")
    arrivals, unique, violations, seen = order_report(sink_file.read_text().splitlines())
    print(f"ordered, server crash: {arrivals} arrivals, {unique} distinct, {violations} per-key order violations; "
          f"{at_crash} arrived before the crash; {time.monotonic() - began:.1f}s")
    assert seen == {(f"key-{k}", s) for k in range(KEYS) for s in range(k, total, KEYS)}  # none lost
    assert (unique, violations) == (total, 0)
    for v in ("in", "echo#A", "echo#B", "out"):
        assert runner.procs[v].poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"


async def _split(nc, pipeline: str) -> bool:
    got = Counter((await owners(nc, pipeline, "echo")).values())
    return dict(got) == {"A": 2, "B": 2}


async def _all_owned_by(nc, pipeline: str, replica: str) -> bool:
    got = await owners(nc, pipeline, "echo")
    return len(got) == 4 and set(got.values()) == {replica}


async def _drained(nc, runner) -> bool:
    p = runner.pipeline
    for v in p.reading_vertices():
        for part in p.partitions(v.name):
            if await runner.stream_messages(nc, names.stream_name(p.name, v.name, part)):
                return False
    return True


def _spec(**spec) -> dict:
    return {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "ord"},
            "spec": {"vertices": [{"name": "in", "source": {"http": {"port": 8080}}},
                                  {"name": "m", "udf": {"map": {"handler": "tests.udfs:identity"}},
                                   "scale": {"max": 3}},
                                  {"name": "out", "sink": {"log": {}}}],
                     "edges": [{"from": "in", "to": "m"}, {"from": "m", "to": "out"}], **spec}}


def _problems(raw: dict) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        parse_pipeline(raw, file="p.yaml")
    assert str(err.value).startswith("p.yaml: ")
    return err.value.problems


def test_ordered_spec_partitions_every_map_and_sink_buffer():
    p = parse_pipeline(_spec(ordered=True), file="p.yaml")
    # default: each vertex's scale.max; a source has no buffer
    assert [plan(p, v).partitions for v in ("in", "m", "out")] == [[None], [0, 1, 2], [None]]
    p = parse_pipeline(_spec(ordered="true", ordering={"partitions": 4, "leaseTtl": "3s"}), file="p.yaml")
    assert p.partitions("m") == p.partitions("out") == [0, 1, 2, 3]
    assert p.spec.ordering.lease_ttl == 3.0
    assert [plan(p, v).partitions for v in ("m",)] == [[0, 1, 2, 3]]
    assert parse_pipeline(_spec(), file="p.yaml").partitions("m") == [None]  # not ordered: one buffer


@pytest.mark.parametrize(("mutate", "path", "reason"), [
    (lambda r: r["spec"]["vertices"][1]["udf"].update(map=None, mapStream={"handler": "tests.udfs:stream_three"}),
     "spec.vertices[1].udf.mapStream", "not supported with spec.ordered: a mapStream handles a batch's inputs "
     "concurrently, so their outputs interleave; use map, flatmap or batchMap"),
    (lambda r: r["spec"]["vertices"][1]["udf"].update(map=None, reduce={
        "handler": "tests.udfs:window_sum", "window": {"fixed": {"length": "1s"}}}),
     "spec.vertices[1].udf.reduce", "not supported with spec.ordered: a reduce orders by windows, not by arrival; "
     "ordered mode keeps the order of maps and sinks"),
    (lambda r: r["spec"]["vertices"][1]["udf"].update(map=None, command=["./prog"]),
     "spec.vertices[1].udf.command", "not supported with spec.ordered: a program of its own reads its buffer "
     "itself; ordered mode needs the worker's partition leases"),
    (lambda r: r["spec"].update(ordering={"partitions": 257}), "spec.ordering.partitions",
     "must be at most 256 (each partition is a buffer stream of its own)"),
    (lambda r: r["spec"].update(ordering={"leaseTtl": "500ms"}), "spec.ordering.leaseTtl",
     "must be at least 1s (renewals every ttl/4 must get through)"),
    (lambda r: r["spec"].update(ordered="sometimes"), "spec.ordered", "expected true or false, got the text "
     "'sometimes'"),
])
def test_ordered_spec_errors_name_the_field(mutate, path, reason):
    raw = _spec(ordered=True)
    mutate(raw)
    assert (path, reason) in _problems(raw)


def test_ordering_without_ordered_is_refused():
    assert _problems(_spec(ordering={"partitions": 2})) == [
        ("spec.ordering", "has no effect unless spec.ordered is true")]


def _delivery(seq: int) -> Msg:
    """A delivered message of stream sequence `seq` as a pull consumer hands it out (only the
    reply subject matters here: it carries the sequence)."""
    return Msg(None, subject="nf.x", reply=f"$JS.ACK.S.C.1.{seq}.{seq}.0.0")  # type: ignore[arg-type]


def _seqs(msgs: list[Msg]) -> list[int]:
    return [envelope.stream_sequence(m) for m in msgs]


def test_a_new_owner_holds_newer_messages_until_what_the_old_one_held_is_back():
    """Ack floor 10, delivered 13 at the takeover: 11..13 were the dead owner's. 14 and 15 arrive
    first and wait; a redelivery of 9 (acked already) is handed back as done; once 11..13 are all
    back the batch is 11..15 in stream order."""
    now = time.monotonic()
    ps = OrderedPartition(0, Lease(0, 1, now + 60), reader=None, recovering=3, recover_to=13,  # type: ignore[arg-type]
                          recover_by=now + 60, acked_to=10)
    assert _seqs(ps.take([_delivery(15), _delivery(14), _delivery(9)])) == [9]
    assert ps.next_batch(10) == []
    ps.take([_delivery(12), _delivery(11), _delivery(12)])  # 12 twice: counted once
    assert ps.next_batch(10) == [] and ps.recovering == 1
    ps.take([_delivery(13)])
    assert _seqs(ps.next_batch(3)) == [11, 12, 13]
    assert _seqs(ps.next_batch(3)) == [14, 15]


def test_a_new_owner_stops_waiting_for_held_messages_at_its_deadline():
    now = time.monotonic()
    ps = OrderedPartition(0, Lease(0, 1, now + 60), reader=None, recovering=1, recover_to=5,  # type: ignore[arg-type]
                          recover_by=now - 1, acked_to=4)
    ps.take([_delivery(7), _delivery(6)])
    assert _seqs(ps.next_batch(10)) == [6, 7] and ps.recovering == 0


def test_rendered_ordered_vertices_scale_on_every_partition():
    """`natsflow render`: KEDA gets one lag trigger per partition of an ordered map and sink."""
    raw = _spec(ordered=True, ordering={"partitions": 3})
    p = parse_pipeline(raw, file="p.yaml")
    files = render_pipeline(p, yaml.safe_dump(raw), RenderOptions(image="i:1"))
    for vertex in ("m", "out"):
        scaled = next(o for o in files[f"{vertex}.yaml"] if o["kind"] == "ScaledObject")
        assert [t["metadata"]["stream"] for t in scaled["spec"]["triggers"]] == [
            f"nf_ord_{vertex}_p{i}" for i in range(3)]
