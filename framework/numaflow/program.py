"""Starting and stopping one Numaflow SDK program (natsflow as its data plane).

Every Numaflow kind (map, sink, source transformer, reduce, side input, user-defined source) uses
it the same way::

    launch = launch_for(p, vertex, spec, "udf.numaflow", base_dir)   # framework/numaflow/launch.py
    program = await NumaflowProgram.start(launch)
    try:
        info = await program.ready(serverinfo.MAPPER)         # or several names: the first written
        stub = map_pb2_grpc.MapStub(program.channel(serverinfo.MAP_SOCKETS[info.map_mode]))
        ...                                                   # gRPC calls; on an RpcError ask
        program.check_alive()                                 # ProgramDied if the program is gone
    finally:
        await program.stop()

For a bidirectional stream with the SDK's handshake, restarts after the user's code raised and
per-input isolation, use framework/numaflow/session.py (ProgramSession) with stream.py
(BidiStream), as mapper.py, sinker.py and transformer.py do.

`start` makes a private socket folder (`folder`; side inputs under `side_input_folder`), runs the
command in its own process group with the NUMAFLOW_* variables the SDKs read and, for Python,
`bootstrap/sitecustomize.py` first on PYTHONPATH so pynumaflow binds its sockets in that folder.
In a rendered pod (`launch.sidecar_folder`) it starts nothing: the program is a sidecar container.
`ready` waits for the server-info file (bounded by the startup timeout; ProgramDied with the last
output lines if the program exits first or never writes it) and checks it
(serverinfo.check_compatible). The program's stdout and stderr are passed on to natsflow's stderr,
each line prefixed. ProgramDied, IncompatibleProgram and NotRunnableHere are VertexFailures: the
vertex hands its batch back and exits non-zero with their text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from framework.local import process
from framework.numaflow import serverinfo
from framework.numaflow.serverinfo import ServerInfo
from framework.runtime.udf import VertexFailure
from framework.sideinputs.files import forget_mirror, mirror_side_inputs

log = logging.getLogger("natsflow.numaflow")

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "bootstrap"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # the SDKs' own gRPC limit (pynumaflow MAX_MESSAGE_SIZE)
STDERR_LINES = 20  # kept for the error text of a program that dies
DEFAULT_GRACE_S = 10.0


class ProgramDied(VertexFailure):
    """The SDK program exited (or never came up); the text has its exit code and last stderr lines."""


@dataclass(frozen=True)
class ProgramLaunch:
    """How to run one instance of a program: `command` and the user's `env` (secrets resolved),
    run in `cwd`; `vertex`/`pipeline`/`replica` become the NUMAFLOW_* variables the SDKs read."""

    command: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    startup_timeout: float = 60.0
    pipeline: str = ""
    vertex: str = ""
    replica: int = 0
    container_type: str | None = None  # NUMAFLOW_UD_CONTAINER_TYPE (framework/spec/programs.py)
    grace: float = DEFAULT_GRACE_S  # SIGTERM → SIGKILL on stop
    # Rendered for Kubernetes: the program is a sidecar container that writes its sockets here
    # (a shared emptyDir); natsflow starts nothing and waits for its server-info file.
    sidecar_folder: Path | None = None

    @property
    def label(self) -> str:
        return " ".join(self.command)


def program_env(launch: ProgramLaunch, folder: Path, side_inputs: Path) -> dict[str, str]:
    """The program's environment: natsflow's own, the user's `env`, the NUMAFLOW_* variables and
    the Python bootstrap (first on PYTHONPATH, the user's PYTHONPATH kept after it)."""
    env = {**os.environ, **launch.env}
    env.update({
        "NATSFLOW_NUMAFLOW_DIR": str(folder),
        "NATSFLOW_NUMAFLOW_SIDE_INPUT_DIR": str(side_inputs),
        "NUMAFLOW_PIPELINE_NAME": launch.pipeline,
        "NUMAFLOW_VERTEX_NAME": launch.vertex,
        "NUMAFLOW_REPLICA": str(launch.replica),
        # pynumaflow waits this long for in-flight calls on SIGTERM; ours is the stop's grace.
        "NUMAFLOW_GRPC_SHUTDOWN_GRACE_PERIOD_SECONDS": str(max(1, int(launch.grace) - 1)),
        "PYTHONUNBUFFERED": "1",
    })
    if launch.container_type:
        env["NUMAFLOW_UD_CONTAINER_TYPE"] = launch.container_type
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BOOTSTRAP_DIR), launch.env.get(
        "PYTHONPATH", os.environ.get("PYTHONPATH", ""))) if p)
    return env


class NumaflowProgram:
    """One running SDK program and its socket folder (see the module docstring)."""

    def __init__(self, launch: ProgramLaunch, folder: Path, proc: asyncio.subprocess.Process | None):
        self.launch = launch
        self.folder = folder
        self.side_input_folder = folder / "side-inputs"
        self.proc = proc  # None: a sidecar natsflow did not start
        self.exited = asyncio.Event()
        self.stopping = False
        self._stderr: deque[str] = deque(maxlen=STDERR_LINES)
        self._pump = asyncio.create_task(self._pass_output())
        self._channels: list[grpc.aio.Channel] = []

    @classmethod
    async def start(cls, launch: ProgramLaunch) -> NumaflowProgram:
        if launch.sidecar_folder is not None:
            log.info("numaflow program %r: a sidecar, sockets in %s", launch.label, launch.sidecar_folder)
            with contextlib.suppress(OSError):  # the sidecar sees it at /var/numaflow/side-inputs
                (launch.sidecar_folder / "side-inputs").mkdir(exist_ok=True)
                mirror_side_inputs(launch.sidecar_folder / "side-inputs")
            return cls(launch, launch.sidecar_folder, None)
        if not launch.command:
            raise ValueError("a numaflow program needs a command to run locally")
        # Short and private: a Unix socket path must stay under ~100 bytes.
        folder = Path(tempfile.mkdtemp(prefix="nf-numaflow-"))
        (folder / "side-inputs").mkdir()
        mirror_side_inputs(folder / "side-inputs")  # the values of the vertex's sideInputs, as Numaflow's files
        try:
            proc = await process.spawn(launch.command, env=program_env(launch, folder, folder / "side-inputs"),
                                       cwd=launch.cwd, stdout=asyncio.subprocess.PIPE,
                                       stderr=asyncio.subprocess.STDOUT, die_with_parent=True)
        except OSError as exc:
            forget_mirror(folder / "side-inputs")
            shutil.rmtree(folder, ignore_errors=True)
            raise ProgramDied(f"{launch.label}: cannot start: {exc}") from None
        log.info("numaflow program %r started (pid %d, sockets in %s)", launch.label, proc.pid, folder)
        return cls(launch, folder, proc)

    async def _pass_output(self) -> None:
        if self.proc is None:
            return
        assert self.proc.stdout is not None
        prefix = f"[{self.launch.vertex or 'numaflow'}/{self.launch.replica} udf] "
        with contextlib.suppress(ValueError, OSError):
            async for raw in self.proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                self._stderr.append(line)
                print(prefix + line, file=sys.stderr, flush=True)
        await self.proc.wait()
        self.exited.set()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc is not None else None

    def last_output(self) -> str:
        return "\n".join(self._stderr)

    def died(self, when: str = "") -> ProgramDied:
        code = self.returncode
        how = f"exited with code {code}" if code is not None and code >= 0 else f"was killed by signal {-(code or 0)}"
        tail = self.last_output()
        return ProgramDied(f"numaflow program {self.launch.label!r} {how}{when}"
                           + (f"; its last output:\n{tail}" if tail else " (no output)"))

    def check_alive(self) -> None:
        """ProgramDied if the program has exited (call it when a gRPC call fails)."""
        if self.returncode is not None:
            raise self.died()

    async def ready(self, *info_files: str) -> ServerInfo:
        """Wait for the first of `info_files` (serverinfo.MAPPER, ...) to be complete and check it.
        ProgramDied when the program exits first or writes none within the startup timeout."""
        deadline = time.monotonic() + self.launch.startup_timeout
        while True:
            for name in info_files:
                info = serverinfo.read_server_info(self.folder / name)
                if info is not None:
                    serverinfo.check_compatible(info, repr(self.launch.label))
                    log.info("numaflow program %r: %s SDK %s (%s %s)", self.launch.label, info.language,
                             info.version, name, info.metadata)
                    return info
            if self.returncode is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._pump), 2)  # its last lines
                raise self.died(" before writing its server-info file")
            if time.monotonic() >= deadline:
                tail = self.last_output()
                raise ProgramDied(
                    f"numaflow program {self.launch.label!r} wrote none of {', '.join(info_files)} in "
                    f"{self.folder} within startupTimeout {self.launch.startup_timeout:g}s (is it a Numaflow "
                    f"SDK server of the right kind?)" + (f"; its last output:\n{tail}" if tail else ""))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.exited.wait(), 0.05)

    def channel(self, socket_name: str) -> grpc.aio.Channel:
        """A gRPC channel to `socket_name` in the program's folder (closed by `stop`)."""
        ch = grpc.aio.insecure_channel(f"unix://{self.folder / socket_name}", options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        self._channels.append(ch)
        return ch

    async def stop(self) -> int | None:
        """Close the channels, SIGTERM the program, SIGKILL its group after the grace; remove the folder.
        Returns the exit code (None: it had to be killed)."""
        self.stopping = True
        for ch in self._channels:
            with contextlib.suppress(Exception):
                await ch.close()
        if self.proc is None:  # a sidecar: Kubernetes runs and stops it
            forget_mirror(self.side_input_folder)
            return None
        code: int | None = self.proc.returncode
        if code is None:
            code = await process.aterminate(self.proc, self.launch.grace)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._pump, 5)
        forget_mirror(self.side_input_folder)
        shutil.rmtree(self.folder, ignore_errors=True)
        return code

    def forget_server_info(self, *info_files: str) -> None:
        """A sidecar that raised restarts on its own (Kubernetes): remove its old server-info
        files so that `ready` waits for the restarted one's."""
        for name in info_files:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / name).unlink()
