"""Long-running CLI work shows progress: `natsflow provision` line by line, `natsflow run` draining."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, wait_for


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)


def test_provision_prints_each_object_and_a_summary(runner):
    runner.write([{"name": "in", "source": {"generator": {"total": 1}}},
                  {"name": "out", "sink": {"blackhole": {}}}], [{"from": "in", "to": "out"}])
    n = runner.name
    first = _cli("provision", str(runner.file), "--nats-url", runner.url, env=runner.env())
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"stream nf_{n}_out: created", f"consumer nf_{n}_out/nf_{n}_out: created",
                                         f"stream nf_{n}_in_dlq: created",  # a source's: records it cannot store
                                         f"stream nf_{n}_out_dlq: created", f"kv nf_{n}_wm: created",
                                         f"kv nf_{n}_lifecycle: created"]
    assert f"provisioning pipeline {n} on {runner.url}..." in first.stderr
    assert re.search(r"provisioned 6 objects in \d+\.\d\ds \(6 created\)", first.stderr), first.stderr
    again = _cli("provision", str(runner.file), "--nats-url", runner.url, env=runner.env())
    assert re.search(r"provisioned 6 objects in \d+\.\d\ds \(6 unchanged\)", again.stderr), again.stderr


async def test_run_prints_draining_progress_on_stop(runner, tmp_path: Path):
    runner.write([{"name": "in", "source": {"generator": {"rpu": 50, "duration": "100ms"}}},
                  {"name": "map", "udf": {"map": {"handler": "tests.udfs:identity"}}},
                  {"name": "out", "sink": {"blackhole": {}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    err = tmp_path / "run.err"
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", str(runner.file), "--nats-url", runner.url,
                             "--grace", "20"], cwd=REPO, env=runner.env(), stdout=subprocess.DEVNULL,
                            stderr=open(err, "w"), start_new_session=True)
    try:
        await wait_for(lambda: "running: " in err.read_text(), 60, "natsflow run to start every vertex")
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, 60, "natsflow run to stop")
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    lines = err.read_text().splitlines()
    assert f"stopping {runner.file.name}: sources first, then the rest drains (up to 20s each)" in lines
    drained = [m.groups() for m in (re.fullmatch(r"draining (\w+) \((\d+) replicas?\)\.\.\. done in (\d+\.\d)s", x)
                                    for x in lines) if m]
    assert [(v, r) for v, r, _ in drained][:1] == [("in", "1")]  # the source stops first
    assert sorted((v, r) for v, r, _ in drained) == [("in", "1"), ("map", "1"), ("out", "1")]
    assert all(float(s) <= took for _, _, s in drained)
