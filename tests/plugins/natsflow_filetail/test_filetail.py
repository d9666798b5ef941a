"""Adding a connector touches one folder: this one. The package beside this test declares a
`filetail` source through the `natsflow.sources` entry point; the test installs it (into a
directory of its own, nothing else changes), validates, runs and renders a pipeline that uses it,
as a user of natsflow and that package would."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import pytest
import yaml

from tests.conftest import wait_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed the way pip installs any package (metadata with its entry point
    included), into a directory the test's processes put on their path."""
    work = tmp_path_factory.mktemp("filetail")
    src = work / "src"
    shutil.copytree(HERE, src, ignore=shutil.ignore_patterns("__pycache__", "test_*.py"))  # builds leave files
    site = work / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    assert list(site.glob("natsflow_filetail-*.dist-info/entry_points.txt"))
    return site


def env(site: Path | None, **extra: str) -> dict[str, str]:
    path = [str(site)] if site is not None else []
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([*path, str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            **extra}


def natsflow(site: Path | None, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], env=env(site, **extra), cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def pipeline(tmp_path: Path, tailed: Path, stream: str) -> Path:
    name = "ft" + uuid.uuid4().hex[:8]
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
           "spec": {"vertices": [{"name": "in", "source": {"filetail": {"path": str(tailed), "pollInterval": "50ms"}}},
                                 {"name": "out", "sink": {"jetstream": {"stream": stream, "subject": f"{name}.out"}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    file = tmp_path / "pipeline.yaml"
    file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return file


def test_without_the_package_the_kind_is_unknown(tmp_path):
    file = pipeline(tmp_path, tmp_path / "in.log", "FT_NONE")
    out = natsflow(None, "validate", str(file), cwd=tmp_path)
    assert out.returncode != 0
    assert "spec.vertices[0].source.filetail: unknown field" in out.stderr


def test_it_renders(plugin_site, tmp_path):
    file = pipeline(tmp_path, tmp_path / "in.log", "FT_RENDER")
    assert natsflow(plugin_site, "validate", str(file), cwd=tmp_path).returncode == 0
    out = natsflow(plugin_site, "render", str(file), "--image", "registry.local/ft:1", "-o", str(tmp_path / "k8s"),
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    objs = list(yaml.safe_load_all((tmp_path / "k8s" / "in.yaml").read_text()))
    assert [o["kind"] for o in objs] == ["Deployment"]  # no buffer, no upstream trigger: a fixed replica count
    assert objs[0]["spec"]["replicas"] == 1


async def test_lines_flow_exactly_once_through_a_real_pipeline(plugin_site, tmp_path, nats_url):
    tailed, stream = tmp_path / "in.log", "FT_" + uuid.uuid4().hex[:8].upper()
    file = pipeline(tmp_path, tailed, stream)
    tailed.write_text("".join(f"line {i}\n" for i in range(100)))
    log = open(tmp_path / "run.log", "ab")  # noqa: ASYNC230 - a log file opened once
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", str(file)], cwd=tmp_path,  # noqa: ASYNC220
                            env=env(plugin_site, NATS_URL=nats_url), stdout=log, stderr=subprocess.STDOUT)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()

    async def stored() -> int:
        try:
            return (await js.stream_info(stream)).state.messages
        except nats.js.errors.NotFoundError:
            return 0

    try:
        await wait_for(lambda: _equals(stored(), 100), 60, "the first 100 lines in the sink's stream")
        with tailed.open("a") as f:
            f.write("".join(f"line {i}\n" for i in range(100, 150)) + "partial")  # no newline: not a line yet
        await wait_for(lambda: _equals(stored(), 150), 30, "150 lines")
        await asyncio.sleep(1.0)  # a duplicate or the partial line would show by now
        msgs = []
        consumer = await js.pull_subscribe(f"{yaml.safe_load(file.read_text())['metadata']['name']}.out",
                                           durable="check", stream=stream)
        while len(msgs) < 150:
            msgs += await consumer.fetch(150 - len(msgs), timeout=5)
        assert [m.data for m in msgs] == [f"line {i}".encode() for i in range(150)]
        assert await stored() == 150
    finally:
        await nc.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]


async def _equals(count, expected: int) -> bool:
    return await count == expected
