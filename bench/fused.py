"""A fused source → map → sink against the same three vertices unfused, in one run on one nats-server.

    python bench/fused.py                 # 2 rounds x 50,000 messages of 256 B
    python bench/fused.py --quick         # 1 round x 10,000

The source is an external JetStream stream preloaded with N messages (each mode reads it through
its own durable consumer), the map is an identity UDF, the sink a `jetstream` sink into a stream of
its own. Why this setup: both modes do the same outside work (one read and ack per message
upstream, one stored message per message downstream), so the difference is only what fusion
removes: the two inter-step buffers, their acks and the extra processes. A generator source would
leave the source's cost out of the unfused figure; a blackhole sink would hide when the last
message arrived.

Per round the two modes run one after the other (unfused, then fused; the order alternates each
round), each with fresh pipelines and streams, on the same server. Throughput = N / (first message
stored at the sink → N stored). CPU µs/event = CPU seconds of every process of the mode (each
vertex process, and the nats-server) over that same interval, / N, read from /proc. The last line
printed is one JSON object with the medians.
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

import nats  # noqa: E402
import yaml  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402

from bench.throughput import PY, UDF_MODULE, BenchError, Procs, cpu_seconds, tail, wait_until  # noqa: E402
from framework.isb.provision import provision  # noqa: E402
from framework.local.embedded import EmbeddedNats  # noqa: E402
from framework.spec import load_pipeline  # noqa: E402

UPSTREAM = "BENCH_SRC"


def pipeline_file(workdir: Path, name: str, fused: bool, out_stream: str) -> Path:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
           "spec": {"limits": {"readBatchSize": 500},
                    "vertices": [{"name": "in", "source": {"jetstream": {"stream": UPSTREAM}}},
                                 {"name": "map", "udf": {"map": {"handler": "benchudf:identity"}}},
                                 {"name": "out", "sink": {"jetstream": {"stream": out_stream,
                                                                        "subject": f"{name}.out"}}}],
                    "edges": [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
                    **({"fuse": [["in", "map", "out"]]} if fused else {})}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def stored(js, stream: str) -> int:
    try:
        return (await js.stream_info(stream)).state.messages
    except NotFoundError:
        return 0


async def measure(nc, server: EmbeddedNats, workdir: Path, n: int, fused: bool, round_: int) -> dict:
    mode = "fused" if fused else "unfused"
    name = f"b{round_}{mode[0]}"
    out_stream = f"BENCH_OUT_{name}"
    path = pipeline_file(workdir, name, fused, out_stream)
    p = load_pipeline(path)
    js = nc.jetstream()
    await provision(js, p)
    procs = Procs(workdir)
    env = {"NATS_URL": server.url, "PYTHONPATH": f"{REPO}:{workdir}", "PYTHONUNBUFFERED": "1",
           "PATH": "/usr/bin:/bin"}
    try:
        for vertex in sorted(p.process_names(), key=lambda v: v == "in"):  # readers first
            procs.start(f"{name}-{vertex}", [PY, "-m", "framework.cli", "vertex", str(path), "--vertex", vertex], env)
        await wait_until(lambda: stored(js, out_stream), 120, f"{mode}: the first message at the sink", procs,
                         interval=0.005)
        t0 = time.monotonic()
        cpu0 = {c.name: cpu_seconds(c.proc.pid) for c in procs.children}
        server0 = cpu_seconds(server.proc.pid)
        first = await stored(js, out_stream)

        async def done() -> bool:
            return await stored(js, out_stream) >= n

        await wait_until(done, 600, f"{mode}: {n} messages at the sink", procs, interval=0.01)
        seconds = time.monotonic() - t0
        cpu = {c.name.split("-", 1)[1]: cpu_seconds(c.proc.pid) - cpu0[c.name] for c in procs.children}
        cpu["nats-server"] = cpu_seconds(server.proc.pid) - server0
        if await stored(js, out_stream) != n:
            raise BenchError(f"{mode}: {await stored(js, out_stream)} messages at the sink, expected {n}")
    except BenchError:
        for c in procs.children:
            print(f"--- {c.name}\n{tail(c.log)}", file=sys.stderr)
        raise
    finally:
        procs.stop_all()
    counted = n - first
    return {"mode": mode, "processes": len(p.process_names()), "eps": counted / seconds,
            "cpu_us": sum(cpu.values()) / counted * 1e6, "cpu": cpu, "seconds": seconds}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", type=int, default=256, help="payload bytes")
    ap.add_argument("--quick", action="store_true", help="1 round of 10,000")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.rounds = 10_000, 1
    with tempfile.TemporaryDirectory(prefix="nf-bench-fused-") as tmp:
        workdir = Path(tmp)
        (workdir / "benchudf.py").write_text(UDF_MODULE)
        server = EmbeddedNats(workdir / "nats").start()
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=UPSTREAM, subjects=["bench.src"])
            payload = b"x" * args.size
            for start in range(0, args.messages, 1000):
                await asyncio.gather(*(js.publish("bench.src", payload)
                                       for _ in range(min(1000, args.messages - start))))
            rows = []
            for r in range(args.rounds):
                for fused in ((False, True) if r % 2 == 0 else (True, False)):
                    row = await measure(nc, server, workdir, args.messages, fused, r)
                    rows.append(row)
                    spent = ", ".join(f"{k} {v:.2f}s" for k, v in row["cpu"].items())
                    print(f"round {r + 1} {row['mode']:8} {row['eps']:9,.0f} events/s  "
                          f"{row['cpu_us']:6.0f} µs CPU/event  ({spent})", flush=True)
        finally:
            await nc.close()
            server.stop()
    med = {m: {k: statistics.median(x[k] for x in rows if x["mode"] == m) for k in ("eps", "cpu_us")}
           for m in ("unfused", "fused")}
    ratio = med["fused"]["eps"] / med["unfused"]["eps"]
    print()
    print(f"{'mode':8} {'processes':>9} {'events/s':>10} {'CPU µs/event':>13}")
    for m, procs in (("unfused", 3), ("fused", 1)):
        print(f"{m:8} {procs:>9} {med[m]['eps']:>10,.0f} {med[m]['cpu_us']:>13.0f}")
    cpu_ratio = med["fused"]["cpu_us"] / med["unfused"]["cpu_us"]
    print(f"fused / unfused throughput: {ratio:.2f}x; CPU per event {cpu_ratio:.2f}x")
    print(json.dumps({"messages": args.messages, "rounds": args.rounds, "ratio": round(ratio, 2),
                      **{f"{m}_{k}": round(v, 1) for m in med for k, v in med[m].items()}}))


if __name__ == "__main__":
    asyncio.run(main())
