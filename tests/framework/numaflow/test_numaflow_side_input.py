"""A side input computed by a pynumaflow SideInput retriever: the manager starts the program and
calls it on the trigger; no_broadcast keeps the previous value; a vertex reads the values live."""

from __future__ import annotations

import json

import pytest

from framework.spec import SpecError, parse_pipeline
from tests.conftest import Collector, PipelineRunner, wait_for
from tests.framework.numaflow.conftest import program
from tests.framework.test_side_inputs import pipeline_doc, publish, results, setup, start_manager, write

pytest.importorskip("pynumaflow")

PROGRAM = program("side_input_counter.py")
NUMAFLOW_SIDE_INPUT = [{"name": "mode", "numaflow": {"command": PROGRAM}, "trigger": {"schedule": "@every 0.2s"}}]


async def test_a_pynumaflow_retriever_feeds_a_side_input_and_no_broadcast_keeps_the_value(runner: PipelineRunner,
                                                                                         nc):
    _, out = await setup(runner, nc, side_inputs=NUMAFLOW_SIDE_INPUT)
    kv_values: list[bytes] = []
    js = nc.jetstream()
    start_manager(runner)
    await runner.start_all()
    await publish(nc, runner, range(50))
    await out.wait_count(50, timeout=60)
    kv = await js.key_value(f"nf_{runner.name}_sideinputs")
    seen = await kv.watch("mode", include_history=True)

    async def three_values() -> bool:
        entry = await seen.updates(timeout=1)
        if entry is not None and entry.value:
            kv_values.append(entry.value)
        return len(kv_values) >= 3

    await wait_for(three_values, 30, "three stored side-input values")
    await seen.stop()
    await runner.terminate("sideinputs")
    # Odd calls broadcast; even ones (no_broadcast) store nothing: the values are consecutive odd calls.
    numbers = [int(v.decode().removeprefix("value-")) for v in kv_values]
    assert all(n % 2 == 1 for n in numbers), numbers
    assert numbers == list(range(numbers[0], numbers[0] + 2 * len(numbers), 2))
    got = results(out)
    assert sorted(got) == list(range(50))  # every input exactly once
    assert all(v.startswith("value-") and int(v[6:]) % 2 == 1 for v in got.values())
    stats = json.loads(runner.log("sideinputs").rsplit("stats ", 1)[1].splitlines()[0])
    # (the stop may cancel the run whose value we saw last before it counts it)
    assert stats["side_input_runs_total[mode][stored]"] >= len(numbers) - 1
    assert stats["side_input_runs_total[mode][no_value]"] >= len(numbers) - 2
    assert stats.get("side_input_runs_total[mode][error]", 0) == 0
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")


def test_a_side_input_needs_exactly_one_of_handler_and_numaflow():
    doc = pipeline_doc("p", "s", "o", side_inputs=[{"name": "mode", "trigger": {"schedule": "@every 1s"}}])
    with pytest.raises(SpecError) as err:
        parse_pipeline(doc, file="p.yaml", check_handlers=False)
    assert "spec.sideInputs[0]: a side input must set exactly one of: handler, numaflow" in str(err.value)
    both = [{**NUMAFLOW_SIDE_INPUT[0], "handler": "m:f"}]
    with pytest.raises(SpecError) as err:
        parse_pipeline(pipeline_doc("p", "s", "o", side_inputs=both), file="p.yaml", check_handlers=False)
    assert "exactly one of: handler, numaflow" in str(err.value)


async def test_a_pynumaflow_map_reads_the_side_input_files_live(runner: PipelineRunner, nc, tmp_path):
    value_file = tmp_path / "mode.txt"
    value_file.write_text("v1")
    stream = f"si_{runner.name}"
    await nc.jetstream().add_stream(name=stream, subjects=[f"{runner.name}.in"])
    out = await Collector().start(nc, f"{runner.name}.out")
    doc = pipeline_doc(runner.name, stream, f"{runner.name}.out")
    doc["spec"]["vertices"][1] = {"name": "enrich", "udf": {"numaflow": {"command": program("append_side_input.py")}},
                                  "sideInputs": ["mode"]}
    write(runner, doc)
    start_manager(runner, SIDE_INPUT_FILE=str(value_file))
    await runner.start_all()
    await publish(nc, runner, range(100))
    await out.wait_count(100, timeout=60)
    assert set(results(out).values()) == {"v1"}
    value_file.write_text("v2")
    sent = 100

    async def switched() -> bool:
        nonlocal sent
        await publish(nc, runner, range(sent, sent + 5))
        sent += 5
        return "v2" in results(out).values()

    await wait_for(switched, 30, "an output carrying the new value", interval=0.05)
    await out.wait_count(sent, timeout=60)
    got = results(out)
    assert sorted(got) == list(range(sent))  # every input exactly once
    values = [got[n] for n in range(sent)]
    first_v2 = values.index("v2")
    assert values == ["v1"] * first_v2 + ["v2"] * (sent - first_v2)  # one switch, in input order
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")


async def test_a_retriever_that_raises_keeps_the_value_and_is_started_again(runner: PipelineRunner, nc, tmp_path):
    flaky = [{"name": "mode", "trigger": {"schedule": "@every 0.2s"},
              "numaflow": {"command": program("side_input_flaky.py"), "env": {"MARKER": str(tmp_path / "raised")}}}]
    _, out = await setup(runner, nc, side_inputs=flaky)
    start_manager(runner)
    await runner.start_all()
    kv = await nc.jetstream().key_value(f"nf_{runner.name}_sideinputs")

    async def value_3() -> bool:
        try:
            return (await kv.get("mode")).value == b"value-3"
        except Exception:
            return False

    # call 1 stores value-1; call 2 raises and the SDK exits; the restarted program's call 1 gives
    # value-1 again (unchanged), its call 2 no_broadcast, its call 3 value-3
    await wait_for(value_3, 30, "value-3 from the restarted retriever")
    await publish(nc, runner, range(20))
    await out.wait_count(20, timeout=60)
    assert await runner.terminate("sideinputs") == 0
    log = runner.log("sideinputs")
    assert "failed (UdfError: UDF_EXECUTION_ERROR" in log and "thresholds service unreachable" in log
    assert "keeping the previous value" in log
    stats = json.loads(log.rsplit("stats ", 1)[1].splitlines()[0])
    assert stats["side_input_runs_total[mode][error]"] == 1  # raised once; the restarted program did not
    assert stats["side_input_runs_total[mode][unchanged]"] == 1  # the restarted program's value-1
    assert stats["side_input_runs_total[mode][stored]"] >= 2  # value-1, value-3, then value-5, ...
    assert all(v.startswith("value-") and int(v[6:]) % 2 == 1 for v in results(out).values())
