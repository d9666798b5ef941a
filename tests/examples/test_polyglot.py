"""examples/polyglot: the `shout` vertex in Node.js and Go passes `natsflow conformance`, and a
pipeline mixing Node.js, Go and Python vertices delivers exactly what the Python function predicts."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from examples.polyglot.shout import shout
from framework.console.status import connection_counts
from framework.sdk import Datum
from tests.conftest import Collector, wait_for

REPO = Path(__file__).resolve().parents[2]
POLY = REPO / "examples" / "polyglot"


@pytest.fixture(scope="session")
def node_vertex() -> list[str]:
    node = shutil.which("node")
    assert node, "Node.js is needed (.ci/run checks it)"
    if not (POLY / "node" / "node_modules" / "nats").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=POLY / "node", check=True, timeout=300)
    return [node, str(POLY / "node" / "vertex.js")]


@pytest.fixture(scope="session")
def go_vertex(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    go = shutil.which("go")
    assert go, "Go is needed: apt-get install golang-go golang-github-nats-io-go-nats-dev (.ci/run does)"
    binary = tmp_path_factory.mktemp("go") / "shout-vertex"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=POLY / "go", check=True, timeout=300,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(binary.parent), "GOPATH": "/usr/share/gocode",
                        "GO111MODULE": "off", "GOCACHE": str(binary.parent / "cache")})
    return [str(binary)]


def conformance(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", "conformance", "--messages", "1500", "--", *cmd],
                          cwd=REPO, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("language", ["node", "go"])
def test_vertex_passes_conformance(language, request):
    res = conformance(request.getfixturevalue(f"{language}_vertex"))
    assert res.returncode == 0, res.stdout + res.stderr
    # watermarks are optional (no reduce downstream); every other rule passes
    assert "15 rules: 14 passed, 0 failed, 1 skipped" in res.stdout, res.stdout


def expected_outputs(words: list[bytes]) -> Counter:
    """What the pipeline must deliver: node's shout, then go's (tag even) or python's (the rest)."""
    out: Counter = Counter()
    for w in words:
        for first in shout([], Datum([], w)):
            for second in shout([], Datum([], first.value)):
                out[second.value] += 1
    return out


async def test_node_go_and_python_in_one_pipeline(runner, nc, nats_server, node_vertex, go_vertex):
    subject = f"in.{runner.name}"
    runner.write(
        vertices=[
            {"name": "words", "source": {"nats": {"subject": subject}}},
            {"name": "node", "udf": {"command": node_vertex}},
            {"name": "go", "udf": {"command": go_vertex}},
            {"name": "python", "udf": {"map": {"handler": "examples.polyglot.shout:shout"}}},
            {"name": "out", "sink": {"nats": {"subject": f"out.{runner.name}"}}},
        ],
        edges=[
            {"from": "words", "to": "node"},
            {"from": "node", "to": "go", "conditions": {"tags": {"operator": "or", "values": ["even"]}}},
            {"from": "node", "to": "python", "conditions": {"tags": {"operator": "not", "values": ["even"]}}},
            {"from": "go", "to": "out"},
            {"from": "python", "to": "out"},
        ],
    )
    collector = await Collector().start(nc, f"out.{runner.name}")
    await runner.start_all()

    async def subscribed() -> bool:  # a probe made it through (its fixed msg id dedups repeats)
        await nc.publish(subject, b"probe", headers={"Nats-Msg-Id": "probe"})
        return len(collector.msgs) >= 1

    await wait_for(subscribed, 60, "the probe to pass every vertex", interval=0.2)
    words = [f"word {i} {'x' * (i % 17)}".encode() for i in range(600)] + [b""] * 5
    for w in words:
        await nc.publish(subject, w)
    want = expected_outputs(words + [b"probe"])
    await collector.wait_count(sum(want.values()), timeout=60)
    await wait_for(lambda: runner.drained(nc), 30, "every buffer drained")
    got = Counter(m.data for m in collector.msgs)
    assert got == want
    ids = collector.ids
    assert len(ids) == len(set(ids)) == sum(want.values())  # each output once, distinct data ids
    # `natsflow ui` counts replicas by connection name: the Node.js and Go programs use it too.
    conns = await asyncio.to_thread(connection_counts, f"http://127.0.0.1:{nats_server.monitor_port}", runner.name)
    assert {v: conns[v] for v in ("node", "go", "python")} == {"node": 1, "go": 1, "python": 1}, conns


async def test_a_reduce_downstream_of_a_program_vertex_closes_windows(runner, nc, go_vertex):
    """The Go vertex publishes no watermarks; the watermark proxy (what `natsflow run` runs for it)
    publishes them from its ack floor, so the reduce after it closes its windows."""
    subject = f"in.{runner.name}"
    runner.write(
        vertices=[
            {"name": "words", "source": {"nats": {"subject": subject}}},
            {"name": "go", "udf": {"command": go_vertex}},
            {"name": "count", "udf": {"reduce": {"handler": "tests.udfs:window_values", "keyed": False,
                                                 "window": {"fixed": {"length": "1s"}}}}},
            {"name": "out", "sink": {"nats": {"subject": f"out.{runner.name}"}}},
        ],
        edges=[{"from": "words", "to": "go"}, {"from": "go", "to": "count"}, {"from": "count", "to": "out"}],
    )
    collector = await Collector().start(nc, f"out.{runner.name}")
    await runner.start_all()
    proxy = subprocess.Popen([sys.executable, "-m", "framework.cli", "watermark-proxy", "--pipeline",
                              str(runner.file), "--vertex", "go"], env=runner.env(), cwd=REPO)
    try:
        base = 1_767_225_600_000  # a whole second: windows [base + k s, base + (k+1) s)
        probe_js = nc.jetstream()

        async def subscribed() -> bool:  # the source's subscription is up once a probe is stored
            await nc.publish(subject, b"p", headers={"Nats-Msg-Id": "probe", "Nf-Event-Time": str(base - 5000)})
            info = await probe_js.stream_info(f"nf_{runner.name}_go")
            return info.state.last_seq >= 1

        await wait_for(subscribed, 30, "the source to subscribe", interval=0.2)
        for i in range(300):  # 100 per window
            await nc.publish(subject, f"w{i}".encode(), headers={"Nf-Event-Time": str(base + i * 10)})

        async def stored() -> bool:
            return (await probe_js.stream_info(f"nf_{runner.name}_go")).state.last_seq >= 301

        await wait_for(stored, 30, "300 messages stored")
        # A source's watermark is the oldest event time of its newest batch: a batch of its own
        # far later moves it past the three windows.
        await nc.publish(subject, b"later", headers={"Nf-Event-Time": str(base + 10_000)})
        await collector.wait_count(4, timeout=60)  # the probe's window and the three full ones
        windows = {json.loads(m.data)["start"]: json.loads(m.data)["values"] for m in collector.msgs}
        assert windows[base - 5000] == ["P"]
        for k in range(3):
            assert windows[base + k * 1000] == sorted(f"W{i}" for i in range(k * 100, (k + 1) * 100))
    finally:
        proxy.terminate()
        assert proxy.wait(20) == 0
