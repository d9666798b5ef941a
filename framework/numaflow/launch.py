"""Start the Numaflow program a spec block names (`udf.numaflow`, `source.numaflow`,
`spec.sideInputs[i].numaflow`) and wait until it serves one of the roles asked for: the reduce
vertex, the side-input manager and the user-defined source share this."""

from __future__ import annotations

import contextlib
from pathlib import Path

from framework.numaflow.program import NumaflowProgram, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.spec.secrets import resolve
from framework.spec.udf import NumaflowProgram as ProgramSpec


async def start_serving(spec: ProgramSpec, where: str, *info_files: str, pipeline: str, vertex: str,
                        base_dir: Path | None) -> tuple[NumaflowProgram, ServerInfo]:
    """The running program and the server-info file it wrote (the first of `info_files`). `where`
    is the block's field path, for a missing command or secret. The caller stops the program."""
    if not spec.command:
        raise SystemExit(f"{where}.command: a numaflow program needs a command to run locally "
                         "(`container` is for `natsflow render`)")
    env = {k: resolve(v, f"{where}.env.{k}") for k, v in spec.env.items()}
    program = await NumaflowProgram.start(ProgramLaunch(list(spec.command), env, base_dir, spec.startup_timeout,
                                                        pipeline=pipeline, vertex=vertex))
    try:
        info = await program.ready(*info_files)
    except BaseException:
        with contextlib.suppress(Exception):
            await program.stop()
        raise
    return program, info
