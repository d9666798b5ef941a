"""Fused chains (`spec.fuse`, `edges[].fused`): the spec rules, and chains run as one process on a
real nats-server: SIGKILLed mid-stream (exact counts at the sink), and in the middle of a pipeline
(a buffer in, a buffer out) with a tag condition and dead letters inside the chain."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nats
import pytest
import yaml

from framework.console.ui.server import PipelineFile, StatusPoller, UiOptions
from framework.k8s.render import RenderOptions, render_pipeline
from framework.local.embedded import free_port
from framework.runtime.fused import ChainRuntime
from framework.runtime.worker import worker_for
from framework.spec import SpecError, parse_pipeline
from framework.testing import run_pipeline
from framework.transport.settings import NatsSettings
from tests.conftest import REPO, Collector, wait_for
from tests.framework.test_faults import _read_all
from tests.framework.test_metrics import get
from tests.framework.test_supervisor import children
from tests.framework.test_tracing import OtlpReceiver, post
from tests.framework.test_tracing import _ready as tracing_ready
from tests.framework.test_worker import gen, out, seqs, udf
from tests.vertices.test_http_source import apost, ready

BASE = {
    "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "demo"},
    "spec": {
        "vertices": [
            {"name": "in", "source": {"generator": {"total": 10}}},
            {"name": "classify", "udf": {"map": {"handler": "tests.udfs:identity"}}},
            {"name": "enrich", "udf": {"map": {"handler": "tests.udfs:identity"}}},
            {"name": "out", "sink": {"log": {}}},
        ],
        "edges": [{"from": "in", "to": "classify"}, {"from": "classify", "to": "enrich"},
                  {"from": "enrich", "to": "out"}],
    },
}


def pipeline(mutate):
    raw = copy.deepcopy(BASE)
    mutate(raw)
    return parse_pipeline(raw, file="p.yaml", check_handlers=False)


def problems(mutate) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as err:
        pipeline(mutate)
    return err.value.problems


def test_spec_fuse_and_fused_edges_resolve_to_the_same_chains():
    listed = pipeline(lambda raw: raw["spec"].update(fuse=[["in", "classify", "enrich", "out"]]))
    by_edges = pipeline(lambda raw: [e.update(fused=True) for e in raw["spec"]["edges"]])
    assert listed.chains() == by_edges.chains() == [["in", "classify", "enrich", "out"]]
    assert listed.process_names() == ["in"] and listed.buffered_vertices() == []

    def middle(raw):
        raw["spec"]["edges"][1]["fused"] = True

    mid = pipeline(middle)
    assert mid.chains() == [["classify", "enrich"]]
    assert mid.process_names() == ["in", "classify", "out"]
    assert [v.name for v in mid.buffered_vertices()] == ["classify", "out"]


def test_fuse_errors_name_the_field():
    assert problems(lambda raw: raw["spec"].update(fuse=[["in", "nope"]])) == [
        ("spec.fuse[0][1]", "no vertex named 'nope'")]
    assert problems(lambda raw: raw["spec"].update(fuse=[["in", "enrich"]])) == [
        ("spec.fuse[0][1]", "no edge from 'in' to 'enrich': the vertices of a fused chain follow edges")]
    assert problems(lambda raw: raw["spec"].update(fuse=[["in"]]))[0][0] == "spec.fuse[0]"
    assert problems(lambda raw: raw["spec"].update(fuse=[["in", "classify"], ["classify", "enrich"]])) == [
        ("spec.fuse[1]", "vertex 'classify' is in more than one fused chain (spec.fuse[0] and spec.fuse[1])")]

    def branch(raw):  # classify also writes to a second sink: not linear
        raw["spec"]["vertices"].append({"name": "other", "sink": {"log": {}}})
        raw["spec"]["edges"].append({"from": "classify", "to": "other"})
        raw["spec"]["edges"][1]["fused"] = True

    assert problems(branch) == [("spec.edges[1].fused", "'classify' has 2 out-edges; every vertex of a fused "
                                 "chain but the last must have exactly one, to the next vertex of the chain")]

    def join(raw):  # enrich also reads from a second source
        raw["spec"]["vertices"].append({"name": "in2", "source": {"generator": {"total": 1}}})
        raw["spec"]["edges"].append({"from": "in2", "to": "enrich"})
        raw["spec"]["fuse"] = [["classify", "enrich"]]

    assert problems(join) == [("spec.fuse[0]", "'enrich' has 2 in-edges; every vertex of a fused chain but the "
                               "first must have exactly one, from the previous vertex of the chain")]

    def reduce(raw):
        raw["spec"]["vertices"][2]["udf"] = {"reduce": {"handler": "tests.udfs:window_sum",
                                                        "window": {"fixed": {"length": "1s"}}}}
        raw["spec"]["fuse"] = [["classify", "enrich"]]

    assert problems(reduce) == [("spec.fuse[0]", "'enrich' is a reduce: a reduce keeps windows across batches, "
                                 "so it cannot be fused")]


def test_a_later_vertex_of_a_chain_is_not_started_alone():
    p = pipeline(lambda raw: raw["spec"].update(fuse=[["classify", "enrich"]]))
    with pytest.raises(SystemExit) as exc:
        worker_for(p, "enrich", NatsSettings(), None)
    assert str(exc.value) == ("vertex 'enrich' is fused behind 'classify' (chain classify > enrich): it runs in the "
                              "process of 'classify'; start that one")
    assert isinstance(worker_for(p, "classify", NatsSettings(), None), ChainRuntime)


def test_render_makes_one_deployment_per_chain():
    def middle(raw):
        raw["spec"]["vertices"][2]["udf"]["env"] = {"MODEL": "small"}
        raw["spec"]["fuse"] = [["classify", "enrich"]]

    p = pipeline(middle)
    files = render_pipeline(p, yaml.safe_dump(BASE), RenderOptions(image="i:1"))
    assert sorted(files) == ["classify.yaml", "in.yaml", "out.yaml", "pipeline.yaml"]
    deployment, scaled = files["classify.yaml"][:2]
    assert deployment["metadata"]["annotations"] == {"natsflow.io/fused": "classify > enrich"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-2:] == ["--vertex", "classify"]
    assert {"name": "MODEL", "value": "small"} in container["env"]  # enrich's env, in classify's pod
    assert scaled["kind"] == "ScaledObject"
    assert [t["metadata"]["stream"] for t in scaled["spec"]["triggers"]] == ["nf_demo_classify"]


async def test_fused_source_flatmap_map_sink_sigkilled_mid_stream_delivers_exactly_once(runner, nc):
    """One process runs a JetStream source, a flatmap, a map and a JetStream sink; it is SIGKILLed
    and restarted three times while 4,000 upstream records become 8,000 outputs: no buffer exists
    between the vertices, and every output is stored once (by payload and by data id)."""
    n, kills = 4000, 3
    js = nc.jetstream()
    upstream, out_stream = f"SRC_{runner.name}", f"OUT_{runner.name}"
    await js.add_stream(name=upstream, subjects=[f"{runner.name}.src"])
    for start in range(0, n, 1000):
        await asyncio.gather(*(js.publish(f"{runner.name}.src", json.dumps({"seq": i}).encode())
                               for i in range(start, min(start + 1000, n))))
    runner.write([{"name": "in", "source": {"jetstream": {"stream": upstream}}},
                  udf("fan", "fan_two", kind="flatmap"), udf("map", "slow_identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "fan"}, {"from": "fan", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"ackWait": "2s", "readBatchSize": 100}, fuse=[["in", "fan", "map", "out"]])
    slow = {"SLOW_MAP_SECONDS": "0.0005"}  # ~2,000 outputs/s: the kills land mid-stream
    await runner.start_all(**slow)
    assert set(runner.procs) == {"in"}

    async def stored() -> int:
        try:
            return (await js.stream_info(out_stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    started = time.monotonic()
    at_kill = []
    for k in range(kills):
        floor = (k + 1) * 2 * n // (kills + 2)
        await wait_for(lambda floor=floor: _at_least(stored, floor), 60, f"{floor} outputs before kill {k + 1}")
        at_kill.append(await stored())
        runner.kill("in")
        runner.start("in", **slow)
    await wait_for(lambda: _at_least(stored, 2 * n), 120, f"{2 * n} outputs")
    for buffered in ("fan", "map", "out"):  # nothing provisioned between fused vertices
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.stream_info(f"nf_{runner.name}_{buffered}")
    data_ids, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
    expected = {f"{i}:{k}".encode() for i in range(n) for k in (0, 1)}
    lost, duplicated = len(expected - set(payloads)), len(payloads) - len(set(payloads))
    print(f"\nfused chain SIGKILLed at outputs {at_kill}: {2 * n} expected, {len(payloads)} stored, lost {lost}, "
          f"duplicated {duplicated}, {time.monotonic() - started:.1f}s")
    assert lost == 0 and duplicated == 0 and len(set(data_ids)) == len(data_ids) == 2 * n
    assert await runner.terminate("in") == 0, runner.log("in")[-2000:]  # alive, and it stops gracefully


async def test_fused_chain_in_the_middle_routes_by_tags_and_dead_letters_per_vertex(runner, nc):
    """in → [tag → score] → ok: the chain reads tag's buffer and writes ok's. The fused edge keeps
    its tag condition (odd messages go nowhere, counted as no_route by tag), and score's failures
    go to score's own dead-letter stream."""
    total = 700
    ok = await Collector().start(nc, f"{runner.name}.ok")
    runner.write([gen("in", total), udf("tag", "tag_parity"),
                  udf("score", "fail_multiples_of_7", retry={"attempts": 1}), out("ok", f"{runner.name}.ok")],
                 [{"from": "in", "to": "tag"},
                  {"from": "tag", "to": "score", "fused": True,
                   "conditions": {"tags": {"operator": "or", "values": ["even"]}}},
                  {"from": "score", "to": "ok"}])
    await runner.provision()
    port = free_port()
    runner.start("ok")
    runner.start("tag", NATSFLOW_METRICS_PORT=str(port))  # the chain's process: tag and score
    runner.start("in")
    kept = [i for i in range(0, total, 2) if i % 7]
    await ok.wait_count(len(kept))
    dlq = f"nf_{runner.name}_score_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 20, "dead letters")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(ok)) == kept and len(set(ok.ids)) == len(kept)
    assert await runner.stream_messages(nc, dlq) == len(range(0, total, 14))
    letter = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.score")
    assert letter.headers["Nf-Error"].startswith("ValueError: cannot score item ")
    assert letter.headers["Nf-Error-Vertex"] == "score"
    rows = runner.status().vertices  # the chain is one row, its dead letters summed
    assert set(rows) == {"in", "tag+score", "ok"}
    assert rows["tag+score"][1] == "udf" and rows["tag+score"][10] == str(len(range(0, total, 14)))
    status, metrics = get(port, "/metrics")
    assert status == 200
    labels = f'pipeline="{runner.name}",vertex='
    stage = f'chain="tag>score",pipeline="{runner.name}",position='
    for line in (f'forwarder_read_total{{{labels}"tag"}} {float(total)}',
                 f'forwarder_read_total{{{labels}"score"}} {float(total // 2)}',
                 f'forwarder_dead_letter_total{{{labels}"score"}} {float(len(range(0, total, 14)))}',
                 f'forwarder_fused_stage{{{stage}"0",vertex="tag"}} 1.0',
                 f'forwarder_fused_stage{{{stage}"1",vertex="score"}} 1.0'):
        assert line in metrics.splitlines(), line
    poller = StatusPoller(nc, PipelineFile(runner.pipeline), UiOptions())  # the web UI's view
    ui = await poller.poll()
    assert {v["name"]: v["fused"] for v in ui["vertices"]} == {"in": None, "tag": ["tag", "score"],
                                                               "score": ["tag", "score"], "ok": None}
    assert [(e["from"], e["to"]) for e in poller.source.layout["edges"] if e["fused"]] == [("tag", "score")]
    assert await runner.terminate("tag") == 0
    stats = json.loads(runner.log("tag").rsplit("stats ", 1)[1].splitlines()[0])
    assert stats["forwarder_drop_total[no_route]"] == total // 2
    assert stats["forwarder_read_total"] == total


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def test_fused_batch_map_and_map_stream_into_a_sink(runner, nc):
    """A chain reading a buffer and ending in a sink, through a batchMap and a mapStream: each
    input gives three outputs, every one delivered once with its own id."""
    total = 300
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", total), udf("batch", "batch_double", kind="batchMap"),
                  udf("stream", "stream_three", kind="mapStream"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "batch"}, {"from": "batch", "to": "stream", "fused": True},
                  {"from": "stream", "to": "out", "fused": True}], limits={"readBatchSize": 50})
    await runner.start_all()
    assert set(runner.procs) == {"in", "batch"}
    await sink.wait_count(3 * total)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(m.data for m in sink.msgs) == sorted(f"{i}:{k}".encode() for i in range(total) for k in range(3))
    assert len(set(sink.ids)) == 3 * total
    assert all(m.headers["batch-size"] for m in sink.msgs)  # the batchMap's header, passed on by the mapStream


async def test_stuck_threads_in_a_later_vertex_end_the_chain_process_non_zero(runner, nc):
    """A handler of the chain's second vertex hangs past its timeout: the input is dead-lettered
    to that vertex's stream, and after 2 stuck threads the chain's process exits non-zero; started
    again, it finishes the rest (each output once)."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    env = {"HANG_SEQS": "10,300,600", "NATSFLOW_MAX_STUCK_THREADS": "2"}
    runner.write([gen("in", 1000), udf("pre", "identity"),
                  udf("slow", "hang_some", timeout="1s", retry={"attempts": 1}), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "pre"}, {"from": "pre", "to": "slow"}, {"from": "slow", "to": "out"}],
                 limits={"readBatchSize": 50}, fuse=[["pre", "slow"]])
    await runner.start_all(**env)
    proc = runner.procs["pre"]
    await wait_for(lambda: proc.poll() is not None, 40, "the chain to exit after its 2nd stuck thread")
    assert proc.returncode != 0 and "2 handler threads are stuck" in runner.log("pre")
    runner.start("pre", **env)
    await sink.wait_count(997, 60)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(sink)) == sorted(set(range(1000)) - {10, 300, 600})
    dlq = f"nf_{runner.name}_slow_dlq"
    assert await runner.stream_messages(nc, dlq) == 3
    letter = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.slow")
    assert letter.headers["Nf-Error"] == "HandlerTimeout: handler did not return within 1s"


def test_harness_runs_a_fused_pipeline_like_the_unfused_one(tmp_path):
    """The in-memory harness (framework/testing) runs each vertex of a chain on its own: the same
    outputs and dead letters as without `fuse`."""
    def write(name: str, fuse: list[list[str]] | None) -> Path:
        doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "t"},
               "spec": {"vertices": [{"name": "in", "source": {"jetstream": {"stream": "IN"}}},
                                     {"name": "score", "udf": {"map": {"handler": "tests.udfs:fail_multiples_of_7"},
                                                               "retry": {"attempts": 1}}},
                                     {"name": "fan", "udf": {"flatmap": {"handler": "tests.udfs:fan_two"}}},
                                     {"name": "out", "sink": {"log": {}}}],
                        "edges": [{"from": "in", "to": "score"}, {"from": "score", "to": "fan"},
                                  {"from": "fan", "to": "out"}],
                        **({"fuse": fuse} if fuse else {})}}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    inputs = {"in": [json.dumps({"seq": i}).encode() for i in range(10)]}
    fused = run_pipeline(write("fused.yaml", [["in", "score", "fan", "out"]]), inputs=inputs)
    plain = run_pipeline(write("plain.yaml", None), inputs=inputs)
    assert dict(fused) == dict(plain)
    assert sorted(fused["out"]) == sorted(f"{i}:{k}".encode() for i in range(10) if i % 7 for k in (0, 1))
    assert [len(fused.dead_letters[v]) for v in ("in", "score", "fan", "out")] == [0, 2, 0, 0]
    assert fused.dead_letters == plain.dead_letters


async def test_natsflow_run_starts_one_process_per_chain(tmp_path):
    """`natsflow run` of the sentiment example with `fuse: [[in, classify]]`: the HTTP source and the
    classifier run in one process (`--vertex in`), no `classify` process or buffer exists, and
    requests still reach the right sinks by tag."""
    port = free_port()
    doc = yaml.safe_load((REPO / "examples" / "sentiment" / "pipeline.yaml").read_text())
    doc["spec"]["vertices"][0]["source"]["http"]["port"] = port
    doc["spec"]["fuse"] = [["in", "classify"]]
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "run.log"
    proc = _natsflow_run(tmp_path, env, log)
    try:
        await wait_for(lambda: ready(port), 60, "the HTTP source")
        commands = list(children(proc.pid).values())
        assert sorted(c.split("--vertex ")[1].split()[0] for c in commands if "--vertex " in c) == [
            "in", "positive", "rest"]
        url = f"http://127.0.0.1:{port}/vertices/in"
        for sentence in ("I love this phone", "This is awful", "What a great day"):
            assert (await apost(url, sentence.encode()))[0] == 200
        await wait_for(lambda: log.read_text().count("[positive] positive id=") == 2, 30, "two positive lines")
        assert "This is awful" not in log.read_text()  # went to the blackhole
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0 and children(proc.pid) == {}


def _natsflow_run(workdir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out_file:
        return subprocess.Popen([sys.executable, "-m", "framework.cli", "run", "pipeline.yaml", "--grace", "10"],
                                cwd=workdir, env=env, stdout=out_file, stderr=subprocess.STDOUT)


async def test_a_fused_chain_is_traced_as_one_unit(runner, nc):
    """Tracing on: a fused http source → map → nats sink exports one span per event (the chain's
    first vertex's), and what leaves the sink carries that span as its parent."""
    otlp = OtlpReceiver()
    sink = await Collector().start(nc, f"{runner.name}.out")
    port = free_port()
    try:
        runner.write([{"name": "in", "source": {"http": {"port": port}}}, udf("map", "identity"),
                      out("out", f"{runner.name}.out")],
                     [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], fuse=[["in", "map", "out"]])
        await runner.start_all(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url, OTEL_BSP_SCHEDULE_DELAY="100")
        await wait_for(lambda: tracing_ready(port), 30, "the HTTP source to listen")
        for i in range(5):
            assert await asyncio.to_thread(post, port, "in", f"e{i}".encode(), {"X-Natsflow-Id": f"e{i}"}) == 200
        await sink.wait_count(5, 30)
        await wait_for(lambda: len(otlp.spans) >= 5, 30, "5 spans")
        runner.stop_all()  # the worker flushes its exporter on SIGTERM: nothing more may arrive
        spans = list(otlp.spans)
        assert sorted(s.attributes["messaging.message.id"] for s in spans) == [f"e{i}" for i in range(5)]
        assert {(s.service, s.name) for s in spans} == {(f"{runner.name}-in", "in publish")}
        by_id = {s.attributes["messaging.message.id"]: s for s in spans}
        for m in sink.msgs:
            span = by_id[m.headers["Nf-Id"]]
            tp = m.headers["traceparent"]
            assert tp[:-2] == f"00-{span.trace_id}-{span.span_id}-" and int(tp[-2:], 16) & 1
    finally:
        runner.stop_all()
        otlp.close()
