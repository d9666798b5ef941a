"""A pynumaflow map vertex against the same function as a native natsflow map handler, same run.

    python bench/numaflow.py                 # 3 rounds × 50k messages of 256 B, each kind per round
    python bench/numaflow.py --quick         # 1 round × 5k

Each pipeline is generator (total N) → map → blackhole on a private nats-server, every vertex its own
process (bench/throughput.py's helpers). The map is either `udf.map: benchudf:identity` (a Python
handler in the natsflow worker) or `udf.numaflow` running tests/numaflow_udfs/copy_async.py, an
unmodified pynumaflow MapAsyncServer doing the same, spoken to over gRPC on a Unix socket. The two
kinds alternate within a round so both see the same machine.

Rate = N / (first message on the map's input → the sink acked all N). CPU µs/event of the map
counts the worker and, for numaflow, the SDK program (a child of the worker). The last line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.throughput import (  # noqa: E402
    PY,
    UDF_MODULE,
    Procs,
    consumer_waiting,
    cpu_seconds,
    drained,
    first_message_probe,
    private_server,
    wait_until,
)
from framework.isb.names import consumer_name, edge_subject, stream_name  # noqa: E402

UDF = REPO / "tests" / "numaflow_udfs" / "copy_async.py"


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def map_cpu(pid: int) -> float:
    """The map worker's CPU seconds plus its children's (the SDK program)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


def pipeline(d: Path, name: str, kind: str, n: int, size: int, batch: int) -> Path:
    (d / "benchudf.py").write_text(UDF_MODULE)
    udf = {"map": {"handler": "benchudf:identity"}} if kind == "native" else \
        {"numaflow": {"command": [PY, str(UDF)]}}
    spec = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
            "spec": {"limits": {"readBatchSize": batch, "bufferMaxLength": max(100_000, n)},
                     "vertices": [{"name": "gen", "source": {"generator": {"rpu": 10_000_000, "duration": "1s",
                                                                             "msgSize": size, "total": n}}},
                                  {"name": "map", "udf": udf},
                                  {"name": "sink", "sink": {"blackhole": {}}}],
                     "edges": [{"from": "gen", "to": "map"}, {"from": "map", "to": "sink"}]}}
    path = d / f"{name}.yaml"
    path.write_text(json.dumps(spec, indent=2))
    return path


async def measure(root: Path, name: str, kind: str, args: argparse.Namespace) -> dict:
    import subprocess

    d = root / name
    d.mkdir()
    procs = Procs(d)
    async with private_server(root, name) as srv:
        try:
            pfile = pipeline(d, name, kind, args.messages, args.size, args.batch)
            prov = subprocess.run([PY, "-m", "framework.cli", "provision", str(pfile)], cwd=REPO, env=srv.env,
                                  capture_output=True, text=True, timeout=60)
            assert prov.returncode == 0, prov.stderr
            started = {}
            for v in ("sink", "map"):
                started[v] = procs.start(f"{name}-{v}", [PY, "-m", "framework.cli", "vertex", "--pipeline",
                                                         str(pfile), "--vertex", v], srv.env)
            for v in ("sink", "map"):
                await wait_until(lambda v=v: consumer_waiting(srv.js, stream_name(name, v), consumer_name(name, v)),
                                 90, f"vertex {v} of {name} to pull", procs)
            map_pid = started["map"].proc.pid
            first = await first_message_probe(srv.nc, edge_subject(name, "map", "gen"), lambda: map_cpu(map_pid))
            procs.start(f"{name}-gen", [PY, "-m", "framework.cli", "vertex", "--pipeline", str(pfile),
                                        "--vertex", "gen"], srv.env)
            await wait_until(drained(srv.js, stream_name(name, "sink"), args.messages), args.timeout,
                             f"{kind} to deliver {args.messages}", procs)
            t_done, cpu_done = time.monotonic(), map_cpu(map_pid)
            t_first, cpu_first = first.result()
            ci = await srv.js.consumer_info(stream_name(name, "sink"), consumer_name(name, "sink"))
            assert ci.delivered.stream_seq == args.messages and ci.num_ack_pending == 0, ci
        finally:
            procs.stop_all()
    return {"kind": kind, "eps": args.messages / (t_done - t_first),
            "map_cpu_us_per_event": (cpu_done - cpu_first) / args.messages * 1e6}


async def main_async(args: argparse.Namespace) -> dict:
    runs: dict[str, list[dict]] = {"native": [], "numaflow": []}
    with tempfile.TemporaryDirectory(prefix="nf-bench-numaflow-") as tmp:
        for r in range(args.rounds):
            order = ("native", "numaflow") if r % 2 == 0 else ("numaflow", "native")
            for kind in order:
                res = await measure(Path(tmp), f"nb{r}{kind[:3]}", kind, args)
                runs[kind].append(res)
                print(f"round {r + 1} {kind:8s} {res['eps']:9.0f} events/s  map CPU "
                      f"{res['map_cpu_us_per_event']:6.1f} µs/event", flush=True)
    summary = {k: {"eps_median": statistics.median(x["eps"] for x in v),
                   "map_cpu_us_per_event_median": statistics.median(x["map_cpu_us_per_event"] for x in v)}
               for k, v in runs.items()}
    summary["ratio_numaflow_to_native"] = summary["numaflow"]["eps_median"] / summary["native"]["eps_median"]
    summary.update(messages=args.messages, size=args.size, batch=args.batch, rounds=args.rounds)
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 5_000, 1
    summary = asyncio.run(main_async(args))
    print(f"numaflow / native = {summary['ratio_numaflow_to_native']:.2f}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
