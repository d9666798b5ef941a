"""A pynumaflow sink as the `numaflow` sink connector, in a real vertex process: every datum
written once, FALLBACK responses to the vertex's fallback sink, ON_SUCCESS ones to `onSuccess`,
FAILURE ones retried."""

from __future__ import annotations

import json

from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import fill, program


async def test_sink_fallback_on_success_and_retried_failures(runner, nc, tmp_path):
    written = tmp_path / "written.txt"
    fallback = await Collector().start(nc, f"{runner.name}.fb")
    on_success = await Collector().start(nc, f"{runner.name}.ons")
    values = [f"v{i}" for i in range(400)] + [f"fb{i}" for i in range(30)] + [f"ons{i}" for i in range(20)] \
        + [f"fail-once{i}" for i in range(10)]
    source = await fill(nc, runner, [v.encode() for v in values])
    sink = {"numaflow": {"command": program("file_sink.py"), "env": {"SINK_FILE": str(written)},
                         "onSuccess": {"nats": {"subject": f"{runner.name}.ons"}}},
            "retryStrategy": {"backoff": {"interval": "10ms"}},
            "fallback": {"nats": {"subject": f"{runner.name}.fb"}}}
    runner.write([source, {"name": "out", "sink": sink}], [{"from": "in", "to": "out"}])
    await runner.start_all()
    await fallback.wait_count(30)
    await on_success.wait_count(20)
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    lines = written.read_text().splitlines()
    expected = [v for v in values if not v.startswith("fb")]
    assert sorted(lines) == sorted(expected)  # each once: FAILURE retried alone, the rest not rewritten
    assert sorted(m.data.decode() for m in fallback.msgs) == sorted(f"fb{i}" for i in range(30))
    assert {m.headers["Nf-Error"] for m in fallback.msgs} == {"the numaflow sink asked for the fallback sink"}
    assert sorted(m.data.decode() for m in on_success.msgs) == sorted(f"done:ons{i}" for i in range(20))
    assert {m.headers["Nf-Keys"] for m in on_success.msgs} == {json.dumps(["ok"])}
    assert await runner.terminate("out") == 0


async def test_a_sink_exception_restarts_the_program_and_the_batch_is_written_again(runner, nc, tmp_path):
    written = tmp_path / "written.txt"
    values = [f"v{i}" for i in range(300)] + ["crash-once"]
    source = await fill(nc, runner, [v.encode() for v in values])
    sink = {"numaflow": {"command": program("file_sink.py"), "env": {"SINK_FILE": str(written)}},
            "retryStrategy": {"backoff": {"interval": "10ms"}}}
    runner.write([source, {"name": "out", "sink": sink}], [{"from": "in", "to": "out"}])
    await runner.start_all()

    def lines() -> set[str]:
        return set(written.read_text().splitlines()) if written.exists() else set()

    await wait_for(lambda: len(lines()) == len(values), 90, "every value written")
    await wait_for(lambda: runner.drained(nc), 90, "buffers to drain")
    # At least once, as for every sink: a datum of the failed batch may be written twice.
    assert set(written.read_text().splitlines()) == set(values)
    assert (tmp_path / "written.txt.crashed").exists()
    assert runner.procs["out"].poll() is None
    assert "RuntimeError(\"the sink fell over on 'crash-once'\")" in runner.log("out")
