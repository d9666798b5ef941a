"""batchMap vs per-message map for sentence embeddings (all-MiniLM-L6-v2 on the CPU).

    python bench/embeddings.py [--messages 2000] [--batch 64] [--runs 3]

Both pipelines are jetstream (N short sentences, published beforehand) -> embed -> blackhole, each vertex its own process, on a private
nats-server; the only difference is `batchMap: {handler: embed, maxBatchSize}` against
`map: {handler: embed_one}`. Needs `pip install -e '.[ml]'`. Prints a table and, last, one JSON line.
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

import nats
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from framework.isb.provision import provision  # noqa: E402
from framework.local import process  # noqa: E402
from framework.local.embedded import EmbeddedNats  # noqa: E402
from framework.spec import load_pipeline  # noqa: E402

SUBJECTS = ["the delivery", "our new model", "this phone", "the support team", "my flight", "the update"]
VERBS = ["arrived", "worked", "failed", "surprised me", "was slow", "felt great"]
ENDS = ["today", "after two weeks", "again", "as promised", "without any problem", "at the worst moment"]


def sentence(i: int) -> str:
    """Short natural sentences, all different, like reviews or support tickets."""
    return (f"{SUBJECTS[i % 6]} {VERBS[(i // 6) % 6]} {ENDS[(i // 36) % 6]}, "
            f"ticket {i} of batch {i // 216}.")


def pipeline(name: str, n: int, udf: dict) -> dict:
    return {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"readBatchSize": 256},
            "vertices": [
                {"name": "in", "source": {"jetstream": {"stream": f"TEXT_{name}"}}},
                {"name": "embed", "udf": udf},
                {"name": "out", "sink": {"blackhole": {}}},
            ],
            "edges": [{"from": "in", "to": "embed"}, {"from": "embed", "to": "out"}],
        },
    }


async def run_one(root: Path, label: str, n: int, udf: dict, timeout: float) -> float:
    d = root / label
    d.mkdir()
    srv = EmbeddedNats(d / "nats").start()
    procs: list[subprocess.Popen] = []
    nc = await nats.connect(srv.url)
    try:
        f = d / "p.yaml"
        f.write_text(yaml.safe_dump(pipeline(label, n, udf)))
        js = nc.jetstream()
        await provision(js, load_pipeline(f))
        await js.add_stream(name=f"TEXT_{label}", subjects=[f"text.{label}"])
        acks = [await js.publish_async(f"text.{label}", sentence(i).encode()) for i in range(n)]
        await asyncio.gather(*acks)
        env = {**os.environ, "NATS_URL": srv.url, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
        for v in ("out", "embed"):
            with open(d / f"{v}.log", "wb") as out:
                procs.append(process.popen([sys.executable, "-m", "framework.cli", "vertex", "--pipeline", str(f),
                                            "--vertex", v], env=env, stdout=out))
        # The model loads at the first call; warm it so load time is not measured as throughput.
        if not await asyncio.to_thread(process.wait_ready,
                                       lambda: "started" in (d / "embed.log").read_text(errors="replace"), 120):
            raise TimeoutError("embed vertex did not start")
        with open(d / "in.log", "wb") as out:
            procs.append(process.popen([sys.executable, "-m", "framework.cli", "vertex", "--pipeline", str(f),
                                        "--vertex", "in"], env=env, stdout=out))
        start = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = await js.stream_info(f"nf_{label}_embed")
            if start is None and first.state.last_seq > 0:
                start = time.monotonic()
            out = await js.stream_info(f"nf_{label}_out")
            if out.state.last_seq >= n and out.state.messages == 0:
                return n / (time.monotonic() - start)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{label}: not done within {timeout}s")
    finally:
        process.terminate_all(procs, 30)
        await nc.close()
        srv.stop()


async def main_async(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="natsflow-embed-"))
    batched, single = [], []
    for run in range(args.runs):
        # The per-message map is ~10x slower: give it fewer messages so a run stays short.
        batched.append(await run_one(root, f"b{run}", args.messages,
                                     {"batchMap": {"handler": "examples.embeddings.udf:embed",
                                                   "maxBatchSize": args.batch, "maxWait": "50ms"}}, args.timeout))
        single.append(await run_one(root, f"s{run}", max(200, args.messages // 5),
                                    {"map": {"handler": "examples.embeddings.udf:embed_one"}}, args.timeout))
        print(f"run {run}: batchMap {batched[-1]:,.0f} ev/s, map {single[-1]:,.0f} ev/s, "
              f"ratio {batched[-1] / single[-1]:.2f}", flush=True)
    b, s = statistics.median(batched), statistics.median(single)
    print()
    print(f"jetstream -> embed (all-MiniLM-L6-v2, CPU) -> blackhole; batchMap maxBatchSize {args.batch}")
    print(f"{'run':<8}{'batchMap ev/s':>15}{'map ev/s':>12}{'ratio':>8}")
    for i, (x, y) in enumerate(zip(batched, single)):
        print(f"{i:<8}{x:>15,.0f}{y:>12,.0f}{x / y:>8.2f}")
    print(f"{'median':<8}{b:>15,.0f}{s:>12,.0f}{b / s:>8.2f}")
    return {"batch_map_eps": round(b, 1), "map_eps": round(s, 1), "ratio": round(b / s, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
