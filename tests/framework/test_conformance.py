"""`natsflow conformance` itself: the Python worker passes every rule, a vertex that breaks the
protocol fails the rules it breaks, with exit code 1."""

from __future__ import annotations

import os
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
    assert len(table) == 15 and set(table.values()) == {"pass"}, res.stdout
    assert "15 rules: 15 passed, 0 failed, 0 skipped" in res.stdout


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


def protocol_vertex(tmp_path: Path, fault: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """tests/protocol_vertex.py with one fault (PROTOCOL_BREAK), through the kit."""
    res = subprocess.run([sys.executable, "-m", "framework.cli", "conformance", "--messages", "1000",
                          "--workdir", str(tmp_path), "--", sys.executable, "-m", "tests.protocol_vertex"],
                         cwd=REPO, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "PROTOCOL_BREAK": fault})
    return res, rows(res.stdout)


PUBACK_RULE = "acks an input only after its publishes are stored (PubAck), even when the server refuses them"
WATERMARK_RULE = "publishes watermarks (SHOULD; needed only upstream of a reduce) with valid values"
ENVELOPE_RULE = "envelope: Nf-Id, Nf-Event-Time, Nf-Keys and user headers carried"


def test_raw_utf8_in_nf_keys_is_accepted(tmp_path):
    # §3: Nf-Keys is JSON in a UTF-8 header value; natsflow writes it ASCII-escaped, raw UTF-8 is
    # allowed too (it once crashed the kit with a TypeError).
    res, table = protocol_vertex(tmp_path, "utf8-keys")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "15 rules: 14 passed, 0 failed, 1 skipped" in res.stdout, res.stdout
    assert table[ENVELOPE_RULE] == "pass" and table[PUBACK_RULE] == "pass" and table[WATERMARK_RULE] == "skip"


def test_acking_before_the_pubacks_fails_when_the_server_refuses_a_publish(tmp_path):
    res, table = protocol_vertex(tmp_path, "ack-early")
    assert res.returncode == 1, res.stdout + res.stderr
    assert table[PUBACK_RULE] == "FAIL", res.stdout
    assert table["publishes refused, then accepted: no loss, no duplicates"] == "FAIL"
    assert table[ENVELOPE_RULE] == "pass"
    line = next(x for x in res.stdout.splitlines() if x.startswith(PUBACK_RULE))
    assert "outputs of acked inputs refused and never stored" in line and " 0 outputs of acked" not in line


def test_header_bytes_that_are_not_utf8_are_a_fail_row_not_a_crash(tmp_path):
    res, table = protocol_vertex(tmp_path, "bad-header-bytes")
    assert res.returncode == 1 and "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    assert table[ENVELOPE_RULE] == "FAIL"
    assert "header 'X-Raw' value is not UTF-8" in res.stdout
    assert "15 rules:" in res.stdout


def test_watermark_values_are_checked(tmp_path):
    res, table = protocol_vertex(tmp_path, "bad-watermark")
    assert res.returncode == 1, res.stdout + res.stderr
    assert table[WATERMARK_RULE] == "FAIL"
    assert "is neither -1 nor an event time up to the input watermark" in res.stdout
    assert table[ENVELOPE_RULE] == "pass" and table[PUBACK_RULE] == "pass"


def test_an_input_without_event_time_takes_its_store_time_not_a_clock(tmp_path):
    res, table = protocol_vertex(tmp_path, "clock-event-time")
    assert res.returncode == 1, res.stdout + res.stderr
    assert table[ENVELOPE_RULE] == "FAIL"
    assert "expected (the input has none) its store time" in res.stdout


def test_the_kit_reads_any_header_bytes_and_reports_a_check_that_raises():
    from framework.testing.rules import RuleBook
    from framework.transport.headers import header_problem, parse_header_block

    block = b'NATS/1.0\r\nNf-Keys: ["k\xc3\xa9"]\r\nX-Raw: caf\xe9\r\nX(bad): 1\r\n\r\n'
    h = parse_header_block(block)
    assert h["Nf-Keys"] == '["k\u00e9"]' and header_problem("Nf-Keys", h["Nf-Keys"]) is None
    assert header_problem("X-Raw", h["X-Raw"]) == "header 'X-Raw' value is not UTF-8"
    assert header_problem("X(bad)", h["X(bad)"]) == "header name 'X(bad)' is not an HTTP token"
    book = RuleBook("even", lambda _line: None)
    book.run_check("some rule", lambda: [] + None)  # type: ignore[operator]
    (row,) = book.results
    assert row.rule == "some rule" and row.ok is False
    assert row.detail.startswith("could not be checked: TypeError: ")
