"""The program a conformance run checks, started and stopped the way `natsflow run` does it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from framework.local import process


class VertexUnderTest:
    """The program being checked, started the way `natsflow run` starts a vertex."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path):
        self.cmd, self.env, self.log_path = cmd, env, log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: ASYNC230 - a local log file, opened once per start
        log.write(f"--- start #{self.starts}: {' '.join(self.cmd)}\n".encode())
        log.flush()
        try:
            self.proc = await process.spawn(self.cmd, env=self.env, stdout=log, stderr=log)
        finally:
            log.close()

    def alive(self) -> bool:
        return process.running(self.proc)

    def kill(self) -> None:
        if self.proc is not None:
            process.kill(self.proc)

    async def terminate(self, grace: float) -> tuple[int | None, float]:
        """SIGTERM; the exit code (None if it outlived `grace` and had to be killed) and seconds taken."""
        assert self.proc is not None
        began = time.monotonic()
        code = await process.aterminate(self.proc, grace)
        return code, time.monotonic() - began

    async def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            await process.akill(self.proc)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        return "\n".join(text[-lines:])
