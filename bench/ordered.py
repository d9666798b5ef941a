"""What ordered mode (`spec.ordered: true`) costs: generator (keyCount 100) → map (identity) →
blackhole sink, each vertex its own process on a private nats-server, with and without ordered.

    python bench/ordered.py                 # 20,000 messages of 256 B, 3 rounds of every variant
    python bench/ordered.py --messages 5000 --rounds 1

Variants: `plain` (one buffer per vertex, one map replica), `ordered-1` (ordered, 2 partitions,
one map replica owning both), `ordered-2` (ordered, 2 partitions, two map replicas, one each).
Throughput = N / (first message stored in a map buffer → every sink partition acked its share,
all N in total); CPU = what the source, map and sink processes used in that time, per message
(less sensitive than the rate to other work on the machine). Helpers (server, processes, waits)
are bench/throughput.py's.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import (
    PY,
    UDF_MODULE,
    Procs,
    consumer_waiting,
    private_server,
    wait_for_quiet,
    wait_until,
)

from framework.isb.names import consumer_name, edge_subject, stream_name
from framework.isb.provision import provision
from framework.spec import load_pipeline

VARIANTS = {"plain": (False, 1), "ordered-1": (True, 1), "ordered-2": (True, 2)}  # (ordered, map replicas)


def write_pipeline(d: Path, name: str, n: int, ordered: bool, batch: int) -> Path:
    (d / "benchudf.py").write_text(UDF_MODULE)
    spec: dict = {
        "limits": {"readBatchSize": batch},
        "vertices": [
            {"name": "gen", "source": {"generator": {"rpu": 10_000_000, "duration": "1s", "msgSize": 256,
                                                     "keyCount": 100, "total": n}}},
            {"name": "map", "udf": {"map": {"handler": "benchudf:identity"}}, "scale": {"max": 2}},
            {"name": "sink", "sink": {"blackhole": {}}},
        ],
        "edges": [{"from": "gen", "to": "map"}, {"from": "map", "to": "sink"}],
    }
    if ordered:
        spec |= {"ordered": True, "ordering": {"partitions": 2}}
    path = d / f"{name}.yaml"
    path.write_text(json.dumps({"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
                                "spec": spec}, indent=2))
    return path


async def run_one(root: Path, name: str, variant: str, n: int, batch: int, timeout: float) -> tuple[float, float]:
    """(messages per second, CPU ms of all natsflow processes per 1,000 messages)."""
    ordered, replicas = VARIANTS[variant]
    d = root / name
    d.mkdir()
    procs = Procs(d)
    async with private_server(root, name) as srv:
        try:
            pfile = write_pipeline(d, name, n, ordered, batch)
            p = load_pipeline(pfile)
            await provision(srv.js, p)
            cmd = [PY, "-m", "framework.cli", "vertex", "--pipeline", str(pfile), "--vertex"]
            procs.start(f"{name}-sink", cmd + ["sink"], srv.env)
            for r in range(replicas):
                procs.start(f"{name}-map{r}", cmd + ["map"], {**srv.env, "NATSFLOW_REPLICA_ID": f"m{r}"})
            for v in ("map", "sink"):  # every partition claimed and pulled from before the source starts
                for part in p.partitions(v):
                    stream = stream_name(name, v, part)
                    consumer = consumer_name(name, v, part)
                    await wait_until(lambda s=stream, c=consumer: consumer_waiting(srv.js, s, c), 30,
                                     f"{stream} to be read", procs)
            first: asyncio.Future[tuple[float, dict[str, float]]] = asyncio.get_running_loop().create_future()

            async def seen(_msg: object) -> None:
                if not first.done():
                    first.set_result((time.monotonic(), procs.cpu(srv.embedded)))

            subs = [await srv.nc.subscribe(edge_subject(name, "map", "gen", part), cb=seen)
                    for part in p.partitions("map")]
            procs.start(f"{name}-gen", cmd + ["gen"], srv.env)
            sink_streams = [stream_name(name, "sink", part) for part in p.partitions("sink")]

            async def done() -> bool:
                states = [(await srv.js.stream_info(s)).state for s in sink_streams]
                return sum(s.last_seq for s in states) >= n and all(s.messages == 0 for s in states)

            await wait_until(done, timeout, f"{variant} to deliver {n}", procs)
            t_done, cpu = time.monotonic(), procs.cpu(srv.embedded)
            for s in subs:
                await s.unsubscribe()
            t_first, cpu_first = first.result()
            workers = sum(cpu[r] - cpu_first.get(r, 0.0) for r in cpu if r not in ("server", "machine"))
            return n / (t_done - t_first), 1e6 * workers / n
        finally:
            procs.stop_all()


async def main_async(args: argparse.Namespace) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="nf-ordered-bench-") as tmp:
        root = Path(tmp)
        for r in range(args.rounds):
            for variant in VARIANTS:  # interleaved, so other work on the machine spreads over all
                await wait_for_quiet(30)
                eps, ms = await run_one(root, f"ob{r}{variant.replace('-', '')}", variant, args.messages, args.batch,
                                    args.timeout)
                rates[variant].append(eps)
                cpu_ms[variant].append(ms)
                print(f"round {r + 1} {variant:10s} {eps:8,.0f} msg/s  {ms:6.0f} CPU ms / 1000 msgs", flush=True)
    for variant, xs in rates.items():
        print(f"{variant:10s} median {statistics.median(xs):8,.0f} msg/s  {statistics.median(cpu_ms[variant]):6.0f} "
              f"CPU ms / 1000 msgs over {len(xs)} run(s)")
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500, help="readBatchSize")
    ap.add_argument("--timeout", type=float, default=180)
    rates = asyncio.run(main_async(ap.parse_args()))
    print(json.dumps({v: statistics.median(xs) for v, xs in rates.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
