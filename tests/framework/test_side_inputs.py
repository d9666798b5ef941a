"""Side inputs end to end (manager and vertices as separate processes on the session's nats-server),
plus spec validation, the SDK calls, the live KV watch and the rendered manager Deployment."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import nats
import pytest
import yaml

from framework import side_input, side_input_json
from framework.k8s.render import RenderOptions, render_pipeline
from framework.local import process
from framework.local.embedded import free_port
from framework.local.replicas import side_input_manager_command
from framework.sideinputs import manager as si
from framework.spec import SpecError, load_pipeline, parse_pipeline
from framework.transport.settings import NatsSettings
from tests.conftest import REPO, Collector, PipelineRunner, wait_for

H = "tests.framework.side_input_handlers"


def pipeline_doc(name: str, stream: str, subject: str, *, side_inputs: list[dict] | None = None,
                 map_handler: str = "append_mode", reads: list[str] | None = None) -> dict:
    return {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "sideInputs": side_inputs if side_inputs is not None else [
                {"name": "mode", "handler": f"{H}:read_mode", "trigger": {"schedule": "@every 0.5s"}}],
            "limits": {"readBatchSize": 50},
            "vertices": [
                {"name": "in", "source": {"jetstream": {"stream": stream}}},
                {"name": "enrich", "udf": {"map": {"handler": f"{H}:{map_handler}"}},
                 "sideInputs": reads if reads is not None else ["mode"]},
                {"name": "out", "sink": {"nats": {"subject": subject}}},
            ],
            "edges": [{"from": "in", "to": "enrich"}, {"from": "enrich", "to": "out"}],
        },
    }


def write(runner: PipelineRunner, doc: dict) -> None:
    runner.file = runner.tmp / f"{runner.name}.yaml"
    runner.file.write_text(yaml.safe_dump(doc, sort_keys=False))
    runner.pipeline = load_pipeline(runner.file)


def start_manager(runner: PipelineRunner, **env: str) -> subprocess.Popen:
    log = runner.tmp / "sideinputs.log"
    runner.logs["sideinputs"] = log
    with open(log, "ab") as out:
        proc = process.popen(side_input_manager_command(runner.file), env=runner.env(**env), cwd=REPO, stdout=out)
    runner.procs["sideinputs"] = proc
    return proc


async def setup(runner: PipelineRunner, nc, **doc_args) -> tuple[str, Collector]:
    stream = f"si_{runner.name}"
    await nc.jetstream().add_stream(name=stream, subjects=[f"{runner.name}.in"])
    out = await Collector().start(nc, f"{runner.name}.out")
    write(runner, pipeline_doc(runner.name, stream, f"{runner.name}.out", **doc_args))
    return stream, out


async def publish(nc, runner: PipelineRunner, seqs: range) -> None:
    js = nc.jetstream()
    for n in seqs:
        await js.publish(f"{runner.name}.in", json.dumps({"seq": n}).encode())


def results(out: Collector) -> dict[int, str]:
    """seq -> the side-input value the map appended; asserts no seq arrived twice."""
    pairs = [m.data.decode().rsplit("|", 1) for m in out.msgs]
    seen = [json.loads(body)["seq"] for body, _ in pairs]
    assert len(seen) == len(set(seen)), "duplicates at the sink"
    return {json.loads(body)["seq"]: value for body, value in pairs}


async def test_outputs_switch_to_the_new_value_while_traffic_flows(runner, nc, tmp_path):
    value_file = tmp_path / "mode.txt"
    value_file.write_text("v1")
    _, out = await setup(runner, nc)
    start_manager(runner, SIDE_INPUT_FILE=str(value_file))
    await runner.start_all()

    await publish(nc, runner, range(100))
    await out.wait_count(100, timeout=60)
    assert set(results(out).values()) == {"v1"}

    value_file.write_text("v2")  # the manager's next run (<= 0.5 s) stores it; the map's watch sees it
    sent = 100
    async def switched() -> bool:
        nonlocal sent
        await publish(nc, runner, range(sent, sent + 5))  # traffic keeps flowing meanwhile
        sent += 5
        return "v2" in results(out).values()

    await wait_for(switched, 30, "an output carrying the new value", interval=0.02)
    await publish(nc, runner, range(sent, sent + 100))
    sent += 100
    await out.wait_count(sent, timeout=60)
    got = results(out)
    assert sorted(got) == list(range(sent))  # every input exactly once
    values = [got[n] for n in range(sent)]
    first_v2 = values.index("v2")
    # One switch, in input order: every output before it has the old value, every one after the new.
    assert values == ["v1"] * first_v2 + ["v2"] * (sent - first_v2)
    assert first_v2 >= 100

    # A failing run keeps the previous value in force: the vertex still appends v2.
    value_file.unlink()
    await wait_for(lambda: "handler tests.framework.side_input_handlers:read_mode failed (FileNotFoundError"
                   in runner.log("sideinputs"), 10, "the manager to log the failed run")
    await publish(nc, runner, range(sent, sent + 50))
    await out.wait_count(sent + 50, timeout=30)
    assert [results(out)[n] for n in range(sent, sent + 50)] == ["v2"] * 50
    assert len(out.msgs) == sent + 50
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")

    assert await runner.terminate("sideinputs") == 0
    stats = runner.log("sideinputs").rsplit("stats ", 1)[1]
    counts = json.loads(stats.splitlines()[0])
    assert counts["side_input_runs_total[mode][stored]"] == 2  # v1, then v2
    assert counts["side_input_runs_total[mode][error]"] >= 1
    assert "side input mode updated" in runner.log("enrich")

    # The value outlives the manager: a map restarted while no manager runs starts with it at once.
    runner.kill("enrich")
    runner.start("enrich", replica="2")
    await publish(nc, runner, range(sent + 50, sent + 70))
    await out.wait_count(sent + 70, timeout=30)
    assert [results(out)[n] for n in range(sent + 50, sent + 70)] == ["v2"] * 20
    assert "waiting for side inputs" not in runner.log("enrich#2")


async def test_vertex_waits_for_every_side_input_before_its_first_message(runner, nc, tmp_path):
    value_file = tmp_path / "limits.txt"
    value_file.write_text("42")
    _, out = await setup(runner, nc, map_handler="append_limit", reads=["limits"], side_inputs=[
        {"name": "limits", "handler": f"{H}:limits", "trigger": {"schedule": "@every 1s"}}])
    port = free_port()
    await runner.provision()
    for v in ("out", "enrich", "in"):
        runner.start(v, **({"NATSFLOW_METRICS_PORT": str(port)} if v == "enrich" else {}))
    await publish(nc, runner, range(50))

    buffer = f"nf_{runner.name}_enrich"
    await wait_for(lambda: "waiting for side inputs: limits" in runner.log("enrich"), 30, "the map to wait")

    async def all_buffered() -> bool:
        return await runner.stream_messages(nc, buffer) == 50

    await wait_for(all_buffered, 30, "the 50 inputs in the map's buffer")
    consumer = await nc.jetstream().consumer_info(buffer, buffer)
    assert consumer.delivered.consumer_seq == 0  # not one message pulled while the value is missing
    assert out.msgs == []
    assert readyz(port) == 503  # not ready while waiting

    start_manager(runner, SIDE_INPUT_FILE=str(value_file))
    await out.wait_count(50, timeout=60)
    got = results(out)
    assert sorted(got) == list(range(50)) and set(got.values()) == {"42"}
    await wait_for(lambda: readyz(port) == 200, 10, "the map to become ready")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert len(out.msgs) == 50


async def test_manager_with_a_handler_it_cannot_import_exits_naming_the_field(runner):
    doc = pipeline_doc(runner.name, "s", "o", side_inputs=[
        {"name": "mode", "handler": f"{H}:read_mode", "trigger": {"schedule": "@every 1s"}},
        {"name": "gone", "handler": f"{H}:nothing_here", "trigger": {"schedule": "@every 1s"}}])
    runner.file = runner.tmp / f"{runner.name}.yaml"
    runner.file.write_text(yaml.safe_dump(doc, sort_keys=False))  # as a manager image without the module sees it
    proc = start_manager(runner, SIDE_INPUT_FILE=str(runner.tmp / "none.txt"))
    await wait_for(lambda: proc.poll() is not None, 30, "the manager to exit")
    assert proc.returncode == 1
    assert (f"spec.sideInputs[1].handler: module '{H}' has no attribute 'nothing_here'"
            in runner.log("sideinputs"))


def readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def test_watcher_follows_kv_updates_and_ignores_deletes(nats_url):
    client = await nats.connect(nats_url)
    pipeline = "w" + Path(__file__).stem.replace("_", "")[:6] + str(free_port())
    try:
        js = client.jetstream()
        assert await si.provision_bucket(js, pipeline) == "created"
        assert await si.provision_bucket(js, pipeline) == "unchanged"
        kv = await js.key_value(si.bucket_name(pipeline))
        await kv.put("other", b"x")
        watcher = await si.SideInputWatcher.start_for(js, pipeline, ["cfg", "other"])
        with pytest.raises(si.SideInputError, match="side input 'cfg' has no value yet"):
            side_input("cfg")
        with pytest.raises(si.SideInputError, match=r"'nope' is not listed in this vertex's sideInputs \(listed: cfg, other\)"):
            side_input("nope")
        await kv.put("cfg", si.encode_value({"max": 3}))
        await wait_for(lambda: watcher.complete.is_set(), 5, "the first value")
        assert side_input_json("cfg") == {"max": 3} and side_input("cfg") == b'{"max":3}'
        await kv.put("cfg", si.encode_value({"max": 4}))
        await wait_for(lambda: side_input_json("cfg") == {"max": 4}, 5, "the updated value")
        await kv.delete("cfg")
        await kv.put("other", b"y")  # after the delete in the stream: once seen, the delete was too
        await wait_for(lambda: side_input("other") == b"y", 5, "the put after the delete")
        assert side_input_json("cfg") == {"max": 4}
        await watcher.close()
    finally:
        await client.jetstream().delete_key_value(si.bucket_name(pipeline))
        await client.close()


async def test_a_hung_handler_times_out_and_keeps_the_previous_value(nats_url):
    doc = pipeline_doc("sitimeout", "S", "s.out", side_inputs=[
        {"name": "mode", "handler": f"{H}:read_mode", "trigger": {"schedule": "@every 1s", "timeout": "200ms"}}])
    p = parse_pipeline(doc, check_handlers=False)
    spec_si = p.spec.side_inputs[0]
    manager = si.SideInputManager(p, NatsSettings.from_env(url=nats_url))
    client = await nats.connect(nats_url)
    try:
        js = client.jetstream()
        await si.provision_bucket(js, p.name)
        manager.kv = await js.key_value(si.bucket_name(p.name))
        assert await manager.refresh(spec_si, lambda: b"v1", None) == b"v1"
        release = threading.Event()

        def hung() -> bytes:  # a sync handler stuck on I/O: its thread cannot be stopped
            release.wait(20)
            return b"v2"

        async def hung_async() -> bytes:
            await asyncio.sleep(20)
            return b"never"

        started = time.monotonic()
        assert await manager.refresh(spec_si, hung, b"v1") == b"v1"  # timed out: previous value stays
        assert await manager.refresh(spec_si, hung, b"v1") == b"v1"  # no second thread while one hangs
        assert await manager.refresh(spec_si, hung_async, b"v1") == b"v1"
        assert time.monotonic() - started < 3
        errors = manager.metrics.registry.get_sample_value(
            "side_input_runs_total", {"pipeline": "sitimeout", "side_input": "mode", "result": "error"})
        assert errors == 3
        assert (await manager.kv.get("mode")).value == b"v1"
        release.set()  # the stuck call returns: the next run starts a new one and stores its value
        await wait_for(lambda: manager._threads["mode"].done(), 5, "the stuck thread to finish")
        assert await manager.refresh(spec_si, hung, b"v1") == b"v2"
        assert (await manager.kv.get("mode")).value == b"v2"
    finally:
        await client.close()


def test_encode_value():
    assert si.encode_value(b"raw") == b"raw"
    assert si.encode_value("text") == b"text"
    assert si.encode_value({"a": [1, 2.5]}) == b'{"a":[1,2.5]}'
    assert si.encode_value(None) is None
    with pytest.raises(TypeError, match="returned object, which is not bytes, str or JSON-serialisable"):
        si.encode_value(object())


def spec_problems(doc: dict, tmp_path: Path) -> str:
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc, file="p.yaml", base_dir=tmp_path)
    return str(err.value)


def test_validation_names_the_field(tmp_path):
    base = pipeline_doc("v", "s", "o")
    doc = json.loads(json.dumps(base))
    doc["spec"]["vertices"][1]["sideInputs"] = ["mode", "thresholds"]
    assert spec_problems(doc, tmp_path) == ("p.yaml: spec.vertices[1].sideInputs[1]: no side input named "
                                            "'thresholds' in spec.sideInputs (mode)")
    doc = json.loads(json.dumps(base))
    doc["spec"]["sideInputs"][0]["trigger"]["schedule"] = "*/5 25 * * *"
    assert spec_problems(doc, tmp_path) == ("p.yaml: spec.sideInputs[0].trigger.schedule: cron hour field: "
                                            "25 is out of range 0-23")
    doc = json.loads(json.dumps(base))
    doc["spec"]["sideInputs"][0]["handler"] = f"{H}:nothing_here"
    assert spec_problems(doc, tmp_path) == (f"p.yaml: spec.sideInputs[0].handler: module '{H}' has no "
                                            "attribute 'nothing_here'")
    doc = json.loads(json.dumps(base))
    doc["spec"]["sideInputs"].append(dict(doc["spec"]["sideInputs"][0]))
    assert "spec.sideInputs[1].name: duplicate side input name 'mode'" in spec_problems(doc, tmp_path)
    doc = json.loads(json.dumps(base))
    doc["spec"]["vertices"][1] = {"name": "enrich", "udf": {"command": ["./enrich"]}, "sideInputs": ["mode"]}
    assert "spec.vertices[1].sideInputs: a command vertex cannot read side inputs" in spec_problems(doc, tmp_path)
    doc = json.loads(json.dumps(base))
    doc["spec"]["sideInputs"][0]["trigger"] = {"schedule": "@every 10s", "interval": 3}
    assert "spec.sideInputs[0].trigger.interval: unknown field" in spec_problems(doc, tmp_path)
    ok = parse_pipeline(pipeline_doc("v", "s", "o"), base_dir=tmp_path)
    assert ok.spec.side_inputs[0].trigger.schedule == "@every 0.5s" and ok.vertex("enrich").side_inputs == ["mode"]


@pytest.mark.parametrize("schedule,after,expected", [
    ("@every 1m30s", "2026-11-28T15:00:10", "2026-11-28T15:01:40"),
    ("*/15 9-17 * * mon-fri", "2026-11-28T15:00:00", "2026-11-30T09:00:00"),  # Saturday -> Monday
    ("0 12 1 * 1", "2026-11-28T15:00:00", "2026-11-30T12:00:00"),  # both day fields: either matches
    ("0 0 1 * */1", "2026-11-28T15:00:00", "2026-12-01T00:00:00"),  # a field starting with * is unrestricted
    ("0 0 29 2 *", "2026-11-28T15:00:00", "2028-02-29T00:00:00"),
    ("@hourly", "2026-11-28T15:00:00", "2026-11-28T16:00:00"),
    ("5 4 * * sun", "2026-11-28T15:00:00", "2026-11-29T04:05:00"),
])
def test_schedules(schedule, after, expected):
    from datetime import datetime, timezone

    from framework.sideinputs.schedule import parse_schedule

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()

    assert parse_schedule(schedule).next_after(ts(after)) == ts(expected)


@pytest.mark.parametrize("schedule,error", [
    ("0 0 30 2 *", "never fires"), ("@every 0s", "positive"), ("@every 5x", "is not a duration"),
    ("* * * *", "must have 5 fields"), ("*/0 * * * *", "step '0'"), ("@often", "unknown schedule"),
])
def test_bad_schedules(schedule, error):
    from framework.sideinputs.schedule import parse_schedule

    with pytest.raises(ValueError, match=error):
        parse_schedule(schedule)


def test_manager_is_rendered_as_its_own_deployment(tmp_path):
    from tests.framework.test_render import validate

    doc = pipeline_doc("fraud", "s", "o")
    doc["spec"]["vertices"][1]["name"] = "sideinputs"  # a vertex with the manager's name must not clash
    doc["spec"]["edges"] = [{"from": "in", "to": "sideinputs"}, {"from": "sideinputs", "to": "out"}]
    p = parse_pipeline(doc, base_dir=tmp_path)
    files = render_pipeline(p, yaml.safe_dump(doc), RenderOptions(image="registry.local/natsflow:test"))
    [manager] = [o for o in files["pipeline.yaml"] if o["kind"] == "Deployment"]
    for objs in files.values():
        for obj in objs:
            validate(obj)
    assert manager["metadata"]["name"] == "fraud-sideinputs-manager"
    assert manager["spec"]["replicas"] == 1 and manager["spec"]["strategy"] == {"type": "Recreate"}
    container = manager["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["natsflow", "sideinputs", "/etc/natsflow/pipeline.yaml"]
    vertex = files["sideinputs.yaml"][0]
    assert vertex["metadata"]["name"] == "fraud-sideinputs"
    sel = manager["spec"]["selector"]["matchLabels"]
    assert not all(vertex["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
    assert not any(o["kind"] == "ScaledObject" and o["metadata"]["name"] == manager["metadata"]["name"]
                   for objs in files.values() for o in objs)


class Lines:
    """The supervisor's prefixed output, kept for assertions."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, s: str) -> None:
        self.text += s

    def flush(self) -> None:
        pass


async def test_supervisor_runs_the_manager_and_restarts_it_when_side_inputs_change(tmp_path, nc, nats_url,
                                                                                    monkeypatch):
    from framework.local.supervisor import Supervisor
    from framework.transport.settings import NatsSettings

    value_file = tmp_path / "mode.txt"
    value_file.write_text("v1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("SIDE_INPUT_FILE", str(value_file))
    runner = PipelineRunner(tmp_path, nats_url)
    _, out = await setup(runner, nc)
    lines = Lines()
    sup = Supervisor(runner.file, NatsSettings.from_env(url=nats_url), grace=10, out=lines)
    await sup.start()
    try:
        await publish(nc, runner, range(30))
        await out.wait_count(30, timeout=60)
        assert sorted(results(out)) == list(range(30)) and set(results(out).values()) == {"v1"}
        first = sup.side_input_manager.replicas[0]

        doc = yaml.safe_load(runner.file.read_text())
        doc["spec"]["sideInputs"][0]["trigger"]["schedule"] = "@every 2s"
        runner.file.write_text(yaml.safe_dump(doc))
        await sup.apply(load_pipeline(runner.file))  # what `natsflow up` does on a file change
        second = sup.side_input_manager.replicas[0]
        assert second is not first and first.proc.returncode == 0
        assert "[sideinputs] " in lines.text and "side-input manager stopped" in lines.text
        await wait_for(lambda: lines.text.count("side-input manager of") == 2, 30, "the second manager to start")

        del doc["spec"]["sideInputs"]
        doc["spec"]["vertices"][1] = {"name": "enrich", "udf": {"map": {"handler": "tests.udfs:identity"}}}
        runner.file.write_text(yaml.safe_dump(doc))
        await sup.apply(load_pipeline(runner.file))
        assert sup.side_input_manager is None and second.proc.returncode == 0
        await publish(nc, runner, range(30, 40))
        await out.wait_count(40, timeout=60)
        assert [m.data for m in out.msgs[30:]] == [json.dumps({"seq": n}).encode() for n in range(30, 40)]
    finally:
        await sup.stop()
