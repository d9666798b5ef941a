"""What a source's `archive:` costs on its write path (docs/replay.md).

    python bench/archive.py [--messages 50000] [--rounds 3] [--batch 500] [--size 256]

On a private nats-server, this process does what a source does for each batch of records: a
`Router` (framework/runtime/routing.py) writes them into the first buffer, and, with the
archive, into the archive stream in the same publish batch. Nobody reads the buffer (it is sized
to hold every message), so only the write path is measured. Rounds alternate without/with the
archive on fresh streams; printed per round and as medians: records/s, this process's CPU µs
per record and the server's. Figures are noisy on a shared machine: compare the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from throughput import cpu_seconds, private_server  # noqa: E402

from framework.isb.provision import provision  # noqa: E402
from framework.isb.writer import BufferWriter, JetStreamPublisher  # noqa: E402
from framework.runtime.routing import Outgoing, Router, source_msg_id  # noqa: E402
from framework.spec import parse_pipeline  # noqa: E402


def pipeline(name: str, n: int, archive: bool) -> dict:
    source: dict = {"generator": {"total": n}}
    if archive:
        source["archive"] = {"maxAge": "1h"}
    return {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
            "spec": {"limits": {"bufferMaxLength": 2 * n, "bufferUsageLimit": 100},
                     "vertices": [{"name": "gen", "source": source}, {"name": "out", "sink": {"blackhole": {}}}],
                     "edges": [{"from": "gen", "to": "out"}]}}


async def one_round(srv, name: str, args, archive: bool) -> dict[str, float]:
    p = parse_pipeline(pipeline(name, args.messages, archive))
    await provision(srv.js, p)
    publisher = JetStreamPublisher(srv.nc)
    await publisher.start()
    router = Router(p, "gen", BufferWriter(srv.js, publisher), publisher, archive=archive)
    payload = b"x" * args.size
    now = int(time.time() * 1000)
    batches = [[Outgoing(source_msg_id("gen", str(i)), str(i), payload, now, ["k"], None, frozenset())
                for i in range(start, min(start + args.batch, args.messages))]
               for start in range(0, args.messages, args.batch)]
    server_pid = srv.embedded.proc.pid
    cpu0, srv0, t0 = time.process_time(), cpu_seconds(server_pid), time.monotonic()
    for items in batches:
        for item in items:
            router.prepare(item)
        await router.write(items)
    wall = time.monotonic() - t0
    cpu, srv_cpu = time.process_time() - cpu0, cpu_seconds(server_pid) - srv0
    await publisher.close()
    stored = (await srv.js.stream_info(f"nf_{name}_out")).state.messages
    assert stored == args.messages, f"{stored} of {args.messages} in the buffer"
    if archive:
        kept = (await srv.js.stream_info(f"nf_{name}_gen_archive")).state.messages
        assert kept == args.messages, f"{kept} of {args.messages} in the archive"
    return {"rate": args.messages / wall, "source_us": cpu / args.messages * 1e6,
            "server_us": srv_cpu / args.messages * 1e6}


async def main_async(args) -> None:
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as root:
        async with private_server(Path(root), "archive") as srv:
            for r in range(args.rounds):
                for archive in (False, True) if r % 2 == 0 else (True, False):
                    row = await one_round(srv, f"b{r}{'a' if archive else 'p'}", args, archive)
                    rows[archive].append(row)
                    print(f"round {r} {'archive' if archive else 'plain  '}: {row['rate']:,.0f} records/s, "
                          f"source {row['source_us']:.1f} us/record, server {row['server_us']:.1f} us/record",
                          flush=True)
    for archive, label in ((False, "plain  "), (True, "archive")):
        med = {k: statistics.median(r[k] for r in rows[archive]) for k in rows[archive][0]}
        print(f"median {label}: {med['rate']:,.0f} records/s, source {med['source_us']:.1f} us/record, "
              f"server {med['server_us']:.1f} us/record")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    asyncio.run(main_async(ap.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
