"""`natsflow run` of a pipeline with a pynumaflow map: the supervisor runs the worker, the worker
its program; the program killed → the worker exits non-zero → the supervisor restarts it, and every
generated message reaches the sink exactly once."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import yaml

from framework.local import process
from tests.conftest import REPO, wait_for
from tests.framework.numaflow.conftest import program
from tests.framework.test_supervisor import children


async def test_natsflow_run_restarts_a_vertex_whose_program_died(tmp_path):
    total = 400
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "nfrun"},
           "spec": {"vertices": [{"name": "in", "source": {"generator": {"rpu": 20, "duration": "100ms",
                                                                         "total": total}}},
                                 {"name": "m", "udf": {"numaflow": {"command": program("copy_async.py")}}},
                                 {"name": "out", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "m"}, {"from": "m", "to": "out"}]}}
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = process.popen([sys.executable, "-m", "framework.cli", "run", "pipeline.yaml", "--grace", "10"],
                             cwd=tmp_path, env=env, stdout=out)
    try:
        def seqs() -> list[int]:
            return [int(s) for s in re.findall(r'^\[out\] out id=\S+ keys=\[\] \{.*?"seq": ?(\d+)', log.read_text(), re.M)]

        await wait_for(lambda: len(seqs()) >= 50, 90, "the first outputs")
        worker = await wait_for(lambda: [pid for pid, cmd in children(proc.pid).items() if "--vertex m" in cmd],
                                30, "the map worker")
        udf = await wait_for(lambda: list(children(worker[0])), 30, "its numaflow program")
        os.kill(udf[0], signal.SIGKILL)
        await wait_for(lambda: re.search(r"vertex m exited with code 1; restart #1", log.read_text()), 60,
                       "the supervisor to restart m")
        await wait_for(lambda: len(seqs()) >= total, 120, f"{total} outputs")
        assert sorted(seqs()) == list(range(total))
        assert "was killed by signal 9" in log.read_text()
    finally:
        process.interrupt(proc, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            process.kill(proc)
            proc.wait()
