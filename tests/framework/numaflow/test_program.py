"""The program launcher: server-info wait and compatibility check, a program that dies or never
comes up, the Python bootstrap that moves pynumaflow's paths, and attaching to a sidecar's folder
(what a rendered pod does), each with real processes."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from framework.numaflow import serverinfo
from framework.numaflow.program import BOOTSTRAP_DIR, NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.serverinfo import END_MARKER, IncompatibleProgram
from tests.conftest import Collector, wait_for
from tests.framework.numaflow.conftest import UDFS, fill
from tests.framework.test_worker import out


def writer(info: dict) -> list[str]:
    """A program that writes `info` as the mapper's server-info file, then waits."""
    code = (f"import os, json, time; open(os.path.join(os.environ['NATSFLOW_NUMAFLOW_DIR'], "
            f"'{serverinfo.MAPPER}'), 'w').write(json.dumps({info!r}) + {END_MARKER!r}); time.sleep(60)")
    return [sys.executable, "-c", code]


INFO = {"protocol": "uds", "language": "python", "version": "0.14.0", "minimum_numaflow_version": "1.4.0-z",
        "metadata": {"MAP_MODE": "batch-map"}}


async def started(command: list[str], timeout: float = 20) -> NumaflowProgram:
    return await NumaflowProgram.start(ProgramLaunch(command, startup_timeout=timeout, grace=2))


async def test_server_info_is_read_and_checked():
    program = await started(writer(INFO))
    try:
        info = await program.ready(serverinfo.MAPPER)
        assert (info.language, info.version, info.map_mode) == ("python", "0.14.0", "batch-map")
    finally:
        await program.stop()
    assert not program.folder.exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"protocol": "tcp"}, "natsflow speaks gRPC over a Unix socket only"),
    ({"minimum_numaflow_version": "1.9.0-z"}, "needs Numaflow 1.9.0-z or newer; natsflow implements the data "
                                              "plane of Numaflow 1.5.0"),
    ({"version": "0.8.1"}, "the python SDK 0.8.1 is older than 0.9.0"),
])
async def test_an_incompatible_program_is_refused_with_why(change, message):
    program = await started(writer({**INFO, **change}))
    try:
        with pytest.raises(IncompatibleProgram, match=message):
            await program.ready(serverinfo.MAPPER)
    finally:
        await program.stop()


async def test_a_program_exiting_before_its_server_info_fails_with_its_last_output():
    program = await started([sys.executable, "-c", "import sys; print('missing module xyz'); sys.exit(3)"])
    try:
        with pytest.raises(ProgramDied, match=r"exited with code 3 before writing its server-info file; "
                                              r"its last output:\nmissing module xyz"):
            await program.ready(serverinfo.MAPPER)
    finally:
        await program.stop()


async def test_a_program_writing_no_server_info_times_out_naming_the_file():
    program = await started([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    try:
        with pytest.raises(ProgramDied, match=f"wrote none of {serverinfo.MAPPER} in .* within startupTimeout 1s"):
            await program.ready(serverinfo.MAPPER)
    finally:
        await program.stop()


def test_the_bootstrap_moves_every_pynumaflow_path(tmp_path):
    code = ("import json, pynumaflow._constants as c; "
            "print(json.dumps({k: v for k, v in vars(c).items() if k.isupper() and isinstance(v, str)}))")
    env = {**os.environ, "NATSFLOW_NUMAFLOW_DIR": str(tmp_path), "PYTHONPATH": str(BOOTSTRAP_DIR)}
    proc = asyncio.run(_run([sys.executable, "-c", code], env))
    paths = {k: v for k, v in json.loads(proc).items() if v.startswith("/")}
    assert paths and all(v.startswith(str(tmp_path)) for v in paths.values()), paths
    assert paths["MAP_SOCK_PATH"] == f"{tmp_path}/map.sock"
    assert paths["SIDE_INPUT_DIR_PATH"] == f"{tmp_path}/side-inputs"


async def _run(cmd: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE)
    out_bytes, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    return out_bytes.decode()


async def test_a_rendered_vertex_attaches_to_its_sidecar(runner, nc, tmp_path):
    """What a rendered pod does, on this machine: the UDF started on its own (the sidecar) in a
    folder under NATSFLOW_NUMAFLOW_SIDECARS; the worker starts nothing and serves through it."""
    from framework.numaflow.launch import SIDECARS_ENV, program_key

    sink = await Collector().start(nc, f"{runner.name}.o")
    source = await fill(nc, runner, [str(i).encode() for i in range(200)])
    # `command` is what `natsflow run` would start; attached to a sidecar, the worker starts nothing.
    udf = {"name": "eo", "udf": {"numaflow": {"command": ["false"], "container": {"image": "example.com/even-odd:1"}}}}
    runner.write([source, udf, out("o", f"{runner.name}.o")], [{"from": "in", "to": "eo"}, {"from": "eo", "to": "o"}])
    folder = tmp_path / "sidecars" / program_key(runner.pipeline.vertex("eo").udf.numaflow)
    folder.mkdir(parents=True)
    env = {**os.environ, "NATSFLOW_NUMAFLOW_DIR": str(folder), "PYTHONPATH": str(BOOTSTRAP_DIR)}
    sidecar = await asyncio.create_subprocess_exec(sys.executable, str(UDFS / "even_odd.py"), env=env,
                                                   stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    try:
        await runner.start_all(**{SIDECARS_ENV: str(tmp_path / "sidecars")})
        await sink.wait_count(200)
        await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
        assert sorted(int(m.data) for m in sink.msgs) == list(range(200))
        assert await runner.terminate("eo") == 0
        with pytest.raises(asyncio.TimeoutError):  # the worker left its sidecar running (Kubernetes' business)
            await asyncio.wait_for(asyncio.shield(sidecar.wait()), 2)
    finally:
        if sidecar.returncode is None:
            sidecar.kill()
        await sidecar.wait()


def test_natsflow_run_refuses_a_program_with_only_a_container(tmp_path):
    from framework.local.replicas import vertex_command
    from framework.spec import SpecError, load_pipeline

    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "c"},
           "spec": {"vertices": [{"name": "in", "source": {"generator": {}}},
                                 {"name": "m", "udf": {"numaflow": {"container": {"image": "x:1"}}}},
                                 {"name": "o", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "m"}, {"from": "m", "to": "o"}]}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(doc))
    with pytest.raises(SpecError, match=r"spec.vertices\[1\].udf.numaflow.command: vertex 'm' has only "
                                        r"udf.numaflow.container, which runs when rendered for Kubernetes"):
        vertex_command(load_pipeline(path), path, "m")
