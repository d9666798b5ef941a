"""`natsflow run` with no NATS URL: embedded server, one process per vertex, restarts, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from framework.local.embedded import free_port
from tests.conftest import REPO, wait_for
from tests.vertices.test_http_source import apost, ready


def children(pid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return out


async def test_run_sentiment_example_on_embedded_nats(tmp_path):
    port = free_port()
    text = (REPO / "examples" / "sentiment" / "pipeline.yaml").read_text().replace("port: 8080", f"port: {port}")
    (tmp_path / "pipeline.yaml").write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NATS_")}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", "pipeline.yaml", "--grace", "10"],
                            cwd=tmp_path, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: ready(port), 60, "the HTTP source")
        url = f"http://127.0.0.1:{port}/vertices/in"
        for sentence in ("I love this phone", "This is awful", "What a great day"):
            assert (await apost(url, sentence.encode()))[0] == 200
        await wait_for(lambda: log.read_text().count("[positive] positive id=") == 2, 30, "two positive lines")
        out = log.read_text()
        assert '"text": "I love this phone", "label": "positive"' in out
        assert '"text": "What a great day", "label": "positive"' in out
        assert "This is awful" not in out  # went to the blackhole
        assert (tmp_path / ".natsflow" / "nats" / "sentiment").is_dir()

        [map_pid] = [pid for pid, cmd in children(proc.pid).items() if "--vertex classify" in cmd]
        os.kill(map_pid, signal.SIGKILL)
        await wait_for(lambda: "vertex classify exited with code -9; restart #1" in log.read_text(), 30,
                       "the supervisor to restart classify")
        await wait_for(lambda: any("--vertex classify" in c for c in children(proc.pid).values()), 30,
                       "a new classify process")
        assert (await apost(url, b"Absolutely wonderful news")) [0] == 200
        await wait_for(lambda: "Absolutely wonderful news" in log.read_text(), 30, "output after restart")
    finally:
        proc.send_signal(signal.SIGINT)
        code = await asyncio.to_thread(proc.wait, 60)
    assert code == 0
    assert "pipeline stopped" in log.read_text()
    assert children(proc.pid) == {}


async def test_a_child_that_ignores_sigterm_is_killed_with_its_group_after_the_grace(tmp_path):
    from framework.local import process

    pidfile = tmp_path / "grandchild"
    # The child ignores SIGTERM and leaves a grandchild behind in its group.
    script = f"trap '' TERM; sleep 60 & echo $! > {pidfile}; wait"
    proc = await process.spawn(["sh", "-c", script])
    await wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, "the grandchild to start")
    grandchild = int(pidfile.read_text())
    assert await process.aterminate(proc, grace=0.5) is None  # killed, not exited
    await wait_for(lambda: not Path(f"/proc/{grandchild}").exists()
                   or "Z" in Path(f"/proc/{grandchild}/stat").read_text().rsplit(")", 1)[1].split()[0],
                   10, "the grandchild to be killed with the group")


def test_every_command_takes_the_pipeline_file_the_same_way(capsys):

    from framework.cli import _resolve_file, build_parser

    def parsed(*argv: str) -> tuple[str, str | None]:
        args = build_parser().parse_args(list(argv))
        _resolve_file(args)
        return args.file, getattr(args, "vertex", None)

    assert parsed("validate", "p.yaml") == parsed("validate", "--pipeline", "p.yaml") == ("p.yaml", None)
    assert parsed("vertex", "p.yaml", "--vertex", "in") == ("p.yaml", "in")
    assert parsed("vertex", "--pipeline", "p.yaml", "--vertex", "in") == ("p.yaml", "in")  # rendered Deployments
    assert parsed("watermark-proxy", "--pipeline", "p.yaml", "--vertex", "go") == ("p.yaml", "go")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vertex", "--help"])
    shown = capsys.readouterr().out
    assert "FILE" in shown and "--pipeline" not in shown  # the alias is hidden


async def test_run_passes_its_grace_to_program_vertices(tmp_path):
    # docs/protocol.md §8: a program plans its drain with NATSFLOW_GRACE_SECONDS, which must be
    # the `--grace` natsflow run gives it, not the default 30.
    program = [sys.executable, "-c",
               "import os, time; print('grace=' + os.environ['NATSFLOW_GRACE_SECONDS'], flush=True); time.sleep(120)"]
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "gracep"},
           "spec": {"vertices": [{"name": "in", "source": {"nats": {"subject": "gracep.in"}}},
                                 {"name": "prog", "udf": {"command": program}},
                                 {"name": "out", "sink": {"blackhole": {}}}],
                    "edges": [{"from": "in", "to": "prog"}, {"from": "prog", "to": "out"}]}}
    (tmp_path / "pipeline.yaml").write_text(json.dumps(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSFLOW_"))}
    env["PYTHONPATH"] = str(REPO)
    log = tmp_path / "run.log"
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", "run", "pipeline.yaml", "--grace", "7"],
                            cwd=tmp_path, env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    try:
        await wait_for(lambda: "[prog] grace=" in log.read_text(), 60, "the program vertex to print its grace")
        assert "[prog] grace=7\n" in log.read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
