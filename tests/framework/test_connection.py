"""Connecting to NATS, as an operator meets it: real nats-server processes with token auth,
user/password auth and TLS (a CA and a server certificate made here with openssl), a closed port
and a port that accepts but never answers. Every command that connects fails within the connect
timeout with exit code 3 and one line naming the cause and the URL, with no credential in its
output; SIGTERM ends a process that is still connecting; a running worker whose connection the
server closes exits 4; a reconnect is one log line per state change."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from framework.local.embedded import EmbeddedNats, free_port
from framework.transport.settings import EXIT_CONNECTION_LOST, EXIT_NO_CONNECTION, NatsSettings, mask_url
from tests.conftest import REPO, wait_for
from tests.vertices.test_http_source import apost, ready

TOKEN = "tok-S3CRET-2f9a"
WRONG_TOKEN = "tok-WRONG-77c1"
PASSWORD = "pw-S3CRET-51ab"
WRONG_PASSWORD = "pw-WRONG-0d3e"
SECRETS = (TOKEN, WRONG_TOKEN, PASSWORD, WRONG_PASSWORD)
DEFAULT_BOUND_S = 10.0


# ---- servers ----------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path  # signed the server's certificate
    other_ca: Path  # signed nothing the server has
    cert: Path
    key: Path


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    assert shutil.which("openssl"), "the openssl command is needed to make the test CA"
    d = tmp_path_factory.mktemp("tls")
    for name in ("ca", "other"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
                "-days", "2", "-subj", f"/CN=natsflow-test-{name}", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=d)
    return Certs(d / "ca.pem", d / "other.pem", d / "server.pem", d / "server.key")


def server_with(tmp: Path, name: str, config: str) -> EmbeddedNats:
    """A nats-server with JetStream and `config` (auth, TLS) on a free loopback port."""
    conf = tmp / f"{name}.conf"
    conf.write_text(config)
    return EmbeddedNats(tmp / name, config=conf).start()


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, certs: Certs):
    tmp = tmp_path_factory.mktemp("secured")
    started = {
        "token": server_with(tmp, "token", f'authorization {{ token: "{TOKEN}" }}\n'),
        "users": server_with(tmp, "users", f'authorization {{ users: [{{user: alice, password: "{PASSWORD}"}}] }}\n'),
        "tls": server_with(tmp, "tls", f'tls {{ cert_file: "{certs.cert}", key_file: "{certs.key}" }}\n'),
    }
    yield started
    for s in started.values():
        s.stop()


class SilentServer:
    """Accepts TCP connections and never says a word: a client waits for INFO until it gives up."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._held.append(conn)
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()
        for c in self._held:
            c.close()


@pytest.fixture
def silent():
    s = SilentServer()
    yield s
    s.close()


# ---- pipelines and the CLI ----------------------------------------------------------------------


def write_pipeline(tmp: Path, name: str, http_port: int | None = None) -> Path:
    """in (http) -> prog (a program vertex: needs a watermark proxy) -> out (blackhole), with one
    side input, so that every connecting command has something to do."""
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": {
        "sideInputs": [{"name": "mode", "handler": "tests.framework.side_input_handlers:read_mode",
                        "trigger": {"schedule": "@every 1h"}}],
        "vertices": [
            {"name": "in", "source": {"http": {"port": http_port or free_port(), "host": "127.0.0.1"}}},
            {"name": "prog", "udf": {"command": [sys.executable, str(REPO / "tests" / "raw_vertex.py")]}},
            {"name": "out", "sink": {"blackhole": {}}}],
        "edges": [{"from": "in", "to": "prog"}, {"from": "prog", "to": "out"}]}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def simple_pipeline(tmp: Path, name: str, http_port: int) -> Path:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name}, "spec": {
        "vertices": [{"name": "in", "source": {"http": {"port": http_port, "host": "127.0.0.1"}}},
                     {"name": "out", "sink": {"blackhole": {}}}],
        "edges": [{"from": "in", "to": "out"}]}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "NATSFLOW_"))}
    env.update({"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra})
    return env


def command(name: str, pipeline: Path, tmp: Path) -> list[str]:
    return {
        "vertex": ["vertex", "--pipeline", str(pipeline), "--vertex", "out"],
        "provision": ["provision", str(pipeline)],
        "run": ["run", str(pipeline), "--data-dir", str(tmp / "data")],
        "status": ["status", str(pipeline)],
        "ui": ["ui", str(pipeline), "--port", str(free_port())],
        "sideinputs": ["sideinputs", str(pipeline)],
        "watermark-proxy": ["watermark-proxy", "--pipeline", str(pipeline), "--vertex", "prog"],
    }[name]


@dataclass
class Outcome:
    code: int
    output: str  # stdout + stderr
    seconds: float


def natsflow(args: list[str], env: dict[str, str] | None = None, timeout: float = 60) -> Outcome:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "framework.cli", *args], env=env or cli_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


def assert_one_line(outcome: Outcome, line: str, bound: float = DEFAULT_BOUND_S) -> None:
    assert outcome.code == EXIT_NO_CONNECTION, outcome
    assert outcome.output.strip() == line, outcome.output
    assert outcome.seconds < bound, f"took {outcome.seconds:.1f}s, bound {bound}s"
    for secret in SECRETS:
        assert secret not in outcome.output


# ---- failing at start -----------------------------------------------------------------------------


def failure_cases(servers: dict[str, EmbeddedNats], certs: Certs, tmp: Path) -> dict[str, tuple[list[str], dict, str]]:
    """case -> (flags, extra env, the one line expected). Credential and TLS failures run with a
    60 s connect timeout and must end well inside the default 10 s: they fail at once, not by
    timing out; the refused port runs with 3 s and must take that long (it retries)."""
    tok, users, tls = servers["token"].url, servers["users"].url, servers["tls"].url
    in_url = users.replace("nats://", f"nats://alice:{WRONG_PASSWORD}@")
    closed = f"nats://127.0.0.1:{free_port()}"
    missing = tmp / "no-such-ca.pem"
    verify = "nats: TLS certificate verify failed: unable to get local issuer certificate"
    cases = {
        "wrong-token": (["--nats-url", tok, "--nats-token", WRONG_TOKEN], {},
                        f"natsflow: nats: authorization violation for {tok}"),
        "no-token": (["--nats-url", tok], {}, f"natsflow: nats: authorization violation for {tok}"),
        "wrong-password-flags": (["--nats-url", users, "--nats-user", "alice", "--nats-password", WRONG_PASSWORD], {},
                                 f"natsflow: nats: authorization violation for {users}"),
        "wrong-password-in-url": (["--nats-url", in_url], {},
                                  f"natsflow: nats: authorization violation for {mask_url(in_url)}"),
        "missing-ca-file": (["--nats-url", tls, "--tls-ca", str(missing)], {},
                            f"natsflow: nats: TLS CA file not found: {missing} (--tls-ca / NATS_TLS_CA)"),
        "wrong-ca": (["--nats-url", tls, "--tls-ca", str(certs.other_ca)], {}, f"natsflow: {verify} for {tls}"),
        "server-requires-tls": (["--nats-url", tls], {},
                                f"natsflow: {verify} (the server requires TLS: pass its CA with --tls-ca / "
                                f"NATS_TLS_CA) for {tls}"),
        "nothing-listening": (["--nats-url", closed], {"NATSFLOW_CONNECT_TIMEOUT": "3"},
                              f"natsflow: nats: connection refused for {closed} (gave up after 3s)"),
    }
    for _flags, env, _line in cases.values():
        env.setdefault("NATSFLOW_CONNECT_TIMEOUT", "60")
    return cases


CASES = ["wrong-token", "no-token", "wrong-password-flags", "wrong-password-in-url", "missing-ca-file", "wrong-ca",
         "server-requires-tls", "nothing-listening"]


@pytest.mark.parametrize("cmd", ["vertex", "provision", "run"])
def test_bad_credentials_tls_or_address_end_the_command_with_one_line(cmd, servers, certs, tmp_path):
    pipeline = write_pipeline(tmp_path, "ff")
    cases = failure_cases(servers, certs, tmp_path)
    for case in CASES:
        flags, env, line = cases[case]
        outcome = natsflow(command(cmd, pipeline, tmp_path) + flags, env=cli_env(**env))
        print(f"{cmd} {case}: exit {outcome.code} in {outcome.seconds:.2f}s")
        assert_one_line(outcome, line)
        if case == "nothing-listening":
            assert outcome.seconds >= 3  # it retried a refused port until the timeout, then gave up
    # `run` checked the connection before starting anything: no vertex process, no data dir server.
    assert not (tmp_path / "data" / "nats").exists()


@pytest.mark.parametrize("cmd", ["status", "ui", "sideinputs", "watermark-proxy"])
def test_every_other_connecting_command_fails_the_same_way(cmd, servers, tmp_path):
    pipeline = write_pipeline(tmp_path, "ff")
    url = servers["token"].url
    outcome = natsflow(command(cmd, pipeline, tmp_path) + ["--nats-url", url, "--nats-token", WRONG_TOKEN])
    assert_one_line(outcome, f"natsflow: nats: authorization violation for {url}")


def test_connect_timeout_flag_and_default_bound_a_silent_server(silent, tmp_path):
    """A port that accepts but never sends INFO: given up after the default 10 s, or the flag's value."""
    pipeline = write_pipeline(tmp_path, "ff")
    outcome = natsflow(command("vertex", pipeline, tmp_path) + ["--nats-url", silent.url])
    assert_one_line(outcome, f"natsflow: nats: no answer for {silent.url} (gave up after 10s)", bound=16)
    assert outcome.seconds >= DEFAULT_BOUND_S
    outcome = natsflow(command("provision", pipeline, tmp_path) + ["--nats-url", silent.url, "--connect-timeout", "2"])
    assert_one_line(outcome, f"natsflow: nats: no answer for {silent.url} (gave up after 2s)", bound=8)
    print(f"silent server: {silent.accepted} connection attempts")


def test_missing_credential_files_are_one_line_each(servers, tmp_path):
    pipeline = write_pipeline(tmp_path, "ff")
    url = servers["tls"].url
    base = command("vertex", pipeline, tmp_path) + ["--nats-url", url]
    for flag, what, env in (("--nats-creds", "credentials file", "NATS_CREDS"),
                            ("--tls-cert", "TLS certificate file", "NATS_TLS_CERT"),
                            ("--tls-key", "TLS key file", "NATS_TLS_KEY")):
        missing = tmp_path / f"missing{flag}"
        outcome = natsflow(base + [flag, str(missing)])
        assert_one_line(outcome, f"natsflow: nats: {what} not found: {missing} ({flag} / {env})")
    bad = natsflow(base, env=cli_env(NATSFLOW_CONNECT_TIMEOUT="soon"))
    assert bad.code == EXIT_NO_CONNECTION
    assert bad.output.strip() == ("natsflow: NATSFLOW_CONNECT_TIMEOUT: Input should be a valid number, unable to "
                                  "parse string as a number (got 'soon')")


@pytest.mark.parametrize("cmd", ["vertex", "run", "sideinputs", "watermark-proxy", "provision"])
async def test_sigterm_ends_a_process_that_is_still_connecting(cmd, silent, tmp_path):
    pipeline = write_pipeline(tmp_path, "ff")
    args = command(cmd, pipeline, tmp_path) + ["--nats-url", silent.url, "--connect-timeout", "120"]
    before = silent.accepted
    proc = subprocess.Popen([sys.executable, "-m", "framework.cli", *args], env=cli_env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        await wait_for(lambda: silent.accepted > before, 30, f"{cmd} to open its connection")
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await wait_for(lambda: proc.poll() is not None, 5, f"{cmd} to exit after SIGTERM")
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    print(f"{cmd}: exit {proc.returncode} {took:.2f}s after SIGTERM")
    assert took < 3, output
    assert "Traceback" not in output
    if cmd == "provision":  # no handler of its own: the default action of SIGTERM
        assert proc.returncode == -signal.SIGTERM
    else:
        assert proc.returncode == 0, output
        assert f"stopped while connecting to {silent.url}" in output


def test_credentials_are_masked_where_the_url_is_printed(servers, tmp_path):
    pipeline = write_pipeline(tmp_path, "masked")
    url = servers["users"].url.replace("nats://", f"nats://alice:{PASSWORD}@")
    outcome = natsflow(["provision", str(pipeline), "--nats-url", url])
    assert outcome.code == 0, outcome.output
    assert f"provisioning pipeline masked on {mask_url(url)}..." in outcome.output
    assert "nats://alice:***@127.0.0.1:" in outcome.output and PASSWORD not in outcome.output
    settings = NatsSettings(url=url, token=TOKEN, password=PASSWORD)
    assert PASSWORD not in repr(settings) and TOKEN not in repr(settings) and PASSWORD not in str(settings)


# ---- once running ---------------------------------------------------------------------------------


class Process:
    """A natsflow process with its output in a file (read while it runs)."""

    def __init__(self, args: list[str], log: Path):
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "framework.cli", *args], env=cli_env(), cwd=REPO,
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self, text: str) -> list[str]:
        return [line for line in self.output.splitlines() if text in line]

    async def exited(self, timeout: float, what: str) -> int:
        await wait_for(lambda: self.proc.poll() is not None, timeout, what)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def revoke_token(server: EmbeddedNats, config: Path) -> None:
    """Rotate the server's token and reload it: connections made with the old one are closed."""
    config.write_text('authorization { token: "rotated-token" }\n')
    server.proc.send_signal(signal.SIGHUP)


@pytest.fixture
def token_server(tmp_path: Path):
    server = server_with(tmp_path, "rotating", f'authorization {{ token: "{TOKEN}" }}\n')
    yield server
    server.stop()


@pytest.mark.parametrize("cmd", ["vertex", "run"])
async def test_a_connection_the_server_closes_ends_the_process_non_zero(cmd, token_server, tmp_path):
    """The token is revoked while the HTTP source runs: the process must exit (4) so that its
    supervisor restarts it, not stay alive answering 503."""
    port = free_port()
    pipeline = simple_pipeline(tmp_path, "lost", port)
    args = (["vertex", "--pipeline", str(pipeline), "--vertex", "in"] if cmd == "vertex"
            else ["run", str(pipeline), "--data-dir", str(tmp_path / "data"), "--grace", "10"])
    if cmd == "vertex":
        assert natsflow(["provision", str(pipeline), "--nats-url", token_server.url, "--nats-token", TOKEN]).code == 0
    p = Process(args + ["--nats-url", token_server.url, "--nats-token", TOKEN], tmp_path / f"{cmd}.log")
    try:
        await wait_for(lambda: ready(port), 60, "the HTTP source to listen")
        status, _ = await apost(f"http://127.0.0.1:{port}/vertices/in", b"before")
        assert status == 200
        revoked = time.monotonic()
        revoke_token(token_server, tmp_path / "rotating.conf")
        code = await p.exited(30, f"{cmd} to exit after its connection was closed")
        took = time.monotonic() - revoked
    finally:
        p.kill()
    output = p.output
    print(f"{cmd}: exit {code} {took:.2f}s after the token was revoked")
    assert code == EXIT_CONNECTION_LOST, output
    lost = f"nats: connection to {token_server.url} closed (authorization violation)"
    if cmd == "vertex":
        assert len(p.lines(lost)) == 1, output
        assert p.lines(lost)[0].endswith(f"ERROR natsflow.connection: natsflow: {lost}; exiting so that the process "
                                         "is restarted")
        assert "Traceback" not in output
    else:
        assert any(line.endswith(f"ERROR natsflow.supervisor: {lost}; stopping the pipeline") for line in
                   p.lines(lost)), output
        assert "pipeline stopped" in output
    assert not await ready(port)
    for secret in SECRETS:
        assert secret not in output


async def test_reconnecting_is_quiet_and_a_stop_while_down_is_prompt(tmp_path):
    """Server killed: one 'disconnected' line however many attempts, one 'reconnected' line when it
    is back, and the source works again. Killed again: SIGTERM ends the worker at once."""
    server = server_with(tmp_path, "flaky", f'authorization {{ token: "{TOKEN}" }}\n')
    port = free_port()
    pipeline = simple_pipeline(tmp_path, "flaky", port)
    url = server.url.replace("nats://", f"nats://{TOKEN}@")  # the token in the URL: it must never be shown
    shown = mask_url(url)
    p = None
    try:
        assert natsflow(["provision", str(pipeline), "--nats-url", url]).code == 0
        p = Process(["--log-level", "DEBUG", "vertex", "--pipeline", str(pipeline), "--vertex", "in",
                     "--nats-url", url], tmp_path / "in.log")
        await wait_for(lambda: ready(port), 60, "the HTTP source to listen")
        server.kill()
        attempts = f"DEBUG natsflow.connection: nats: connection refused ({shown})"
        await wait_for(lambda: len(p.lines(attempts)) >= 5, 30, "5 reconnect attempts")
        assert len(p.lines(f"nats: disconnected from {shown}")) == 1, p.output
        assert p.lines("WARNING natsflow.connection: nats: ") == p.lines(f"nats: disconnected from {shown}"), p.output
        server.start()
        await wait_for(lambda: p.lines(f"INFO natsflow.connection: nats: reconnected to {shown}"), 30,
                       "the reconnected line")
        status, body = await apost(f"http://127.0.0.1:{port}/vertices/in", b"after", {"X-Natsflow-Id": "after-1"})
        assert (status, body) == (200, {"id": "after-1"})
        tries = len(p.lines(attempts))
        server.kill()
        await wait_for(lambda: len(p.lines(f"nats: disconnected from {shown}")) == 2, 30, "the second disconnect")
        sent = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = await p.exited(5, "the worker to exit after SIGTERM while NATS is down")
        took = time.monotonic() - sent
    finally:
        if p is not None:
            p.kill()
        server.stop()
    output = p.output
    print(f"{tries} reconnect attempts logged at DEBUG only; exit {code} {took:.2f}s after SIGTERM while down")
    assert code == 0
    assert took < 3
    assert len(p.lines("WARNING natsflow.connection: vertex in: stop requested while NATS is unreachable; "
                       "exiting without draining")) == 1
    # One line per state change: disconnected, reconnected, disconnected; each attempt only at DEBUG.
    assert len(p.lines("WARNING natsflow.connection: nats: ")) == 2
    assert len(p.lines("INFO natsflow.connection: nats: ")) == 1
    assert "Traceback" not in output
    assert TOKEN not in output
