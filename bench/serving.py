"""Serving latency: the sentiment model answered through HTTP → map → serve, against the same
function called directly in a Starlette handler (the cost of the pipeline, in ms).

    python bench/serving.py [--requests 2000] [--concurrency 50] [--warmup 100]

Both run on this machine: the pipeline as three vertex processes (serving source, the
`examples.sentiment.udf:classify` map, the serve sink) on a private nats-server; the direct
server as one uvicorn process whose handler calls `classify`. The same client (aiohttp, one
keep-alive pool of `concurrency` connections, in this process) sends `requests` POSTs with
`concurrency` in flight, after `warmup` unmeasured ones, and times each. Prints a table and,
last, one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from framework.isb.provision import provision  # noqa: E402
from framework.local import process  # noqa: E402
from framework.local.embedded import EmbeddedNats, free_port  # noqa: E402
from framework.spec import load_pipeline  # noqa: E402

TEXTS = ["I love this phone", "the delivery was late again", "it works", "worst support ever",
         "great update, thank you", "meh"]


def direct_app():  # the baseline: the model function in a plain Starlette handler
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from examples.sentiment.udf import classify
    from framework import Datum

    async def handle(request: Request) -> JSONResponse:
        out = classify([], Datum([], await request.body()))
        return JSONResponse({"results": [out.value.decode()]})

    return Starlette(routes=[Route("/classify", handle, methods=["POST"])])


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return process.popen(cmd, env=env, stdout=out)


def pipeline(port: int) -> dict:
    return {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "servebench"},
        "spec": {
            "vertices": [
                {"name": "in", "source": {"serving": {"port": port, "host": "127.0.0.1", "requestTimeout": "30s"}}},
                {"name": "classify", "udf": {"map": {"handler": "examples.sentiment.udf:classify"}}},
                {"name": "out", "sink": {"serve": {}}},
            ],
            "edges": [{"from": "in", "to": "classify"}, {"from": "classify", "to": "out"}],
        },
    }


async def load(url: str, n: int, concurrency: int) -> tuple[float, list[float]]:
    """(requests/s, latencies in ms) of n POSTs with `concurrency` in flight; every answer checked."""
    latencies: list[float] = []
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            for i in counter:
                started = time.perf_counter()
                async with session.post(url, data=TEXTS[i % len(TEXTS)].encode()) as resp:
                    doc = await resp.json()
                if resp.status != 200 or len(doc["results"]) != 1 or "label" not in doc["results"][0]:
                    raise RuntimeError(f"{url}: unexpected answer {resp.status} {doc}")
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - started), latencies


async def ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=b"warm up") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def measure(url: str, args: argparse.Namespace) -> dict:
    await ready(url, 60)
    await load(url, args.warmup, args.concurrency)
    rps, lat = await load(url, args.requests, args.concurrency)
    return {"rps": round(rps, 1), "p50_ms": round(pct(lat, 50), 2), "p99_ms": round(pct(lat, 99), 2)}


async def main_async(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="natsflow-serving-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    port = free_port()
    direct = spawn([sys.executable, __file__, "--direct-server", str(port)], env, root / "direct.log")
    try:
        direct_res = await measure(f"http://127.0.0.1:{port}/classify", args)
    finally:
        process.terminate_all([direct], 10)
    srv = EmbeddedNats(root / "nats").start()
    procs: list[subprocess.Popen] = []
    try:
        port = free_port()
        f = root / "p.yaml"
        f.write_text(yaml.safe_dump(pipeline(port)))
        nc = await nats.connect(srv.url)
        await provision(nc.jetstream(), load_pipeline(f))
        await nc.close()
        for v in ("out", "classify", "in"):
            procs.append(spawn([sys.executable, "-m", "framework.cli", "vertex", "--pipeline", str(f), "--vertex", v],
                               {**env, "NATS_URL": srv.url}, root / f"{v}.log"))
        pipe_res = await measure(f"http://127.0.0.1:{port}/v1/process/sync", args)
    finally:
        process.terminate_all(procs, 30)
        srv.stop()
    print()
    print(f"sentiment classify, {args.requests} POSTs, {args.concurrency} concurrent clients ({os.cpu_count()} cores)")
    print(f"{'':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    print(f"{'direct (Starlette handler)':<34}{direct_res['rps']:>9,.0f}{direct_res['p50_ms']:>9.1f}"
          f"{direct_res['p99_ms']:>9.1f}")
    print(f"{'pipeline (serving → map → serve)':<34}{pipe_res['rps']:>9,.0f}{pipe_res['p50_ms']:>9.1f}"
          f"{pipe_res['p99_ms']:>9.1f}")
    cost = round(pipe_res["p50_ms"] - direct_res["p50_ms"], 2)
    print(f"pipeline cost at p50: {cost:.1f} ms")
    return {"direct": direct_res, "pipeline": pipe_res, "p50_cost_ms": cost}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--direct-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.direct_server:
        from framework.observability.http import server
        asyncio.run(server(direct_app(), "127.0.0.1", args.direct_server, own_signals=True).serve())
        return 0
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
