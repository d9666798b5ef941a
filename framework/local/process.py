"""Child processes natsflow starts on one machine: vertices (`natsflow run`), the program under
conformance check, the test harness's workers, the benchmark's roles, an embedded nats-server.

Each child runs in its own process group (a new session), so a Ctrl-C at the terminal reaches
the parent only (it drains its children in order) and a stop that runs out of patience can end
the program together with whatever it started. The rule is the same everywhere: SIGTERM to the
child, wait up to `grace` seconds, then SIGKILL its whole group. Both subprocess flavours are
covered: `subprocess.Popen` (sync callers) and asyncio's `Process` (the supervisor, conformance).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import IO, Any

AnyProcess = subprocess.Popen | asyncio.subprocess.Process
Output = int | IO[Any] | None


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL if its parent dies without cleaning up (a killed bench)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def popen(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
          stdout: Output = subprocess.DEVNULL, stderr: Output = subprocess.STDOUT,
          die_with_parent: bool = False) -> subprocess.Popen:
    """Start `cmd` in its own process group, stdin from /dev/null."""
    return subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=stderr, start_new_session=True,
                            preexec_fn=_die_with_parent if die_with_parent else None)


async def spawn(cmd: Sequence[str], *, env: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None, stdout: Output = asyncio.subprocess.DEVNULL,
                stderr: Output = asyncio.subprocess.STDOUT, limit: int = 1 << 16,
                die_with_parent: bool = False) -> asyncio.subprocess.Process:
    """`popen` for asyncio: `stdout=asyncio.subprocess.PIPE` gives a reader with line `limit`."""
    return await asyncio.create_subprocess_exec(
        *cmd, env=dict(env) if env is not None else None, cwd=cwd, stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout, stderr=stderr, start_new_session=True, limit=limit,
        preexec_fn=_die_with_parent if die_with_parent else None)


def exit_code(proc: AnyProcess) -> int | None:
    """The exit code once the child has ended (negative: the signal that ended it), else None."""
    if isinstance(proc, subprocess.Popen):
        return proc.poll()
    return proc.returncode


def running(proc: AnyProcess | None) -> bool:
    return proc is not None and exit_code(proc) is None


def _signal(proc: AnyProcess, sig: int, group: bool) -> None:
    if exit_code(proc) is not None:  # reaped: its pid (and group id) may belong to someone else now
        return
    with contextlib.suppress(ProcessLookupError):
        if group:
            # The child leads its own group (popen/spawn); a child started otherwise shares ours,
            # so then only the child itself is signalled.
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
                return
        proc.send_signal(sig)


def kill(proc: AnyProcess) -> None:
    """SIGKILL the child's group now (fault tests, a stop out of patience); does not wait."""
    _signal(proc, signal.SIGKILL, group=True)


def interrupt(proc: AnyProcess, sig: int = signal.SIGTERM) -> None:
    """Ask the child to stop (SIGTERM: a worker drains, then exits); its own children are its business."""
    _signal(proc, sig, group=False)


def terminate(proc: subprocess.Popen, grace: float) -> int | None:
    """SIGTERM, up to `grace` s to exit, then SIGKILL the group: the exit code, None when killed."""
    return terminate_all([proc], grace)[0]


def terminate_all(procs: Sequence[subprocess.Popen], grace: float) -> list[int | None]:
    """`terminate` for several children at once: all asked first, one deadline for all."""
    for proc in procs:
        interrupt(proc)
    deadline = time.monotonic() + grace
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill(proc)
            proc.wait()
            codes.append(None)
    return codes


async def aterminate(proc: asyncio.subprocess.Process, grace: float) -> int | None:
    """`terminate` for an asyncio child."""
    interrupt(proc)
    try:
        return await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        kill(proc)
        await proc.wait()
        return None


async def akill(proc: asyncio.subprocess.Process) -> int:
    """SIGKILL the group and collect the exit code."""
    kill(proc)
    return await proc.wait()


def wait_ready(ready: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
               interval: float = 0.05) -> bool:
    """Poll `ready()` until true (True), the deadline passes (False), or `proc` exits (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return True
        if time.monotonic() >= deadline or (proc is not None and proc.poll() is not None):
            return False
        time.sleep(interval)


async def await_ready(ready: Callable[[], Awaitable[bool]], timeout: float,
                      proc: asyncio.subprocess.Process | None = None, interval: float = 0.1) -> bool:
    """`wait_ready` for asyncio, with an async check."""
    deadline = time.monotonic() + timeout
    while True:
        if await ready():
            return True
        if time.monotonic() >= deadline or (proc is not None and proc.returncode is not None):
            return False
        await asyncio.sleep(interval)


__all__ = ["akill", "aterminate", "await_ready", "exit_code", "interrupt", "kill", "popen", "running", "spawn",
           "terminate", "terminate_all", "wait_ready"]
