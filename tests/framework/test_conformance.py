"""`natsflow conformance` itself: the Python worker passes every rule, a vertex that breaks the
protocol fails the rules it breaks, with exit code 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def conformance(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", "conformance", "--messages", "1500", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def rows(stdout: str) -> dict[str, str]:
    """rule -> pass/FAIL/skip, from the printed table."""
    out = {}
    for line in stdout.splitlines():
        for mark in ("  pass  ", "  FAIL  ", "  skip  "):
            if mark in line:
                out[line.split(mark)[0].strip()] = mark.strip()
    return out


def test_python_worker_passes_every_rule():
    res = conformance("--handler", "examples.polyglot.shout:shout")
    table = rows(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr
    assert len(table) == 13 and set(table.values()) == {"pass"}, res.stdout
    assert "13 rules: 13 passed, 0 failed, 0 skipped" in res.stdout


def test_a_vertex_that_breaks_the_protocol_fails_its_rules(tmp_path):
    # tests/raw_vertex.py writes every output to every edge, copies Nf-Keys blindly, never
    # dead-letters and ignores back pressure.
    res = conformance("--workdir", str(tmp_path), "--", sys.executable, str(REPO / "tests" / "raw_vertex.py"))
    table = rows(res.stdout)
    assert res.returncode == 1, res.stdout + res.stderr
    assert table["routing by tags: `or [even]` and `not [even]` split the unconditional edge"] == "FAIL"
    assert table["a bad message (invalid Nf-Keys) is dead-lettered with Nf-Error, then acked"] == "FAIL"
    assert table["waits at a full buffer (soft limit) instead of overfilling it"] == "FAIL"
    assert table["Nats-Msg-Id is <vertex>:<input origin>:<output index>"] == "pass"
    assert table["SIGKILL mid-stream + restart: no loss, no duplicates"] == "pass"
    assert "failed" in res.stdout and (tmp_path / "cf1.log").exists()


def test_needs_a_command_or_a_handler():
    res = conformance()
    assert res.returncode == 2 and "give either --handler MOD:FN or -- CMD" in res.stderr
