"""The hand-written baseline of bench/throughput.py: source → map → sink with plain nats-py.

No natsflow import here on purpose: this is what the same pipeline costs when written directly
against nats-py's JetStream API (js.publish_async with the acks of a batch gathered,
pull_subscribe_bind + fetch, msg.ack).
Streams and consumers are created by bench/throughput.py before these processes start.

    python bench/raw_nats.py source --subject S --n N --size B [--rate R --stamp]
    python bench/raw_nats.py map    --stream A --durable A --out-subject S [--batch 500]
    python bench/raw_nats.py sink   --stream B --durable B [--batch 500] [--lat-subject S]

The URL comes from $NATS_URL. map and sink run until SIGTERM/SIGINT; source exits when done.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

import nats
from nats.errors import TimeoutError as NatsTimeoutError

STAMP_LEN = 13  # epoch milliseconds as 13 ASCII digits at the start of the payload


async def connect(name: str):
    return await nats.connect(os.environ["NATS_URL"], name=name, max_reconnect_attempts=-1,
                              pending_size=64 * 1024 * 1024)


def stop_event() -> asyncio.Event:
    ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ev.set)
    return ev


async def source(args) -> None:
    nc = await connect("raw-source")
    js = nc.jetstream()
    subject, n, chunk = args.subject, args.n, args.inflight
    fixed = b"x" * args.size

    def payloads(k: int) -> list[bytes]:
        if not args.stamp:
            return [fixed] * k
        stamp = b"%013d" % int(time.time() * 1000)  # one stamp per chunk, as the generator does
        body = stamp + b"x" * max(0, args.size - STAMP_LEN)
        return [body] * k

    print(f"cpu_start={time.process_time():.3f}", flush=True)  # start-up CPU, before the first publish
    sent = 0
    if args.rate <= 0:
        # As fast as acks come back: `chunk` publishes in flight, their acks gathered.
        while sent < n:
            k = min(chunk, n - sent)
            await asyncio.gather(*[await js.publish_async(subject, p) for p in payloads(k)])
            sent += k
    else:
        # Paced: `per_tick` messages every `tick` seconds.
        tick = args.tick
        per_tick = max(1, round(args.rate * tick))
        next_at = time.monotonic()
        while sent < n:
            k = min(per_tick, n - sent)
            await asyncio.gather(*[await js.publish_async(subject, p) for p in payloads(k)])
            sent += k
            next_at += tick
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
    await nc.drain()
    print(f"cpu_seconds={time.process_time():.3f}", flush=True)


async def map_(args) -> None:
    stop = stop_event()
    nc = await connect("raw-map")
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(args.durable, args.stream)
    out = args.out_subject
    while not stop.is_set():
        try:
            msgs = await psub.fetch(args.batch, timeout=1.0)
        except NatsTimeoutError:
            continue
        # identity: publish every input to the next stream, acks gathered, then ack the inputs
        await asyncio.gather(*[await js.publish_async(out, m.data) for m in msgs])
        for m in msgs:
            await m.ack()
    # not drain(): a pull subscription's unread 408 status messages keep drain() waiting its full timeout
    await nc.flush()
    await nc.close()


async def sink(args) -> None:
    stop = stop_event()
    nc = await connect("raw-sink")
    js = nc.jetstream()
    psub = await js.pull_subscribe_bind(args.durable, args.stream)
    lat = args.lat_subject
    while not stop.is_set():
        try:
            msgs = await psub.fetch(args.batch, timeout=1.0)
        except NatsTimeoutError:
            continue
        if lat:
            for m in msgs:
                await nc.publish(lat, m.data)
            await nc.flush()
        for m in msgs:
            await m.ack()
    # not drain(): a pull subscription's unread 408 status messages keep drain() waiting its full timeout
    await nc.flush()
    await nc.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="role", required=True)
    s = sub.add_parser("source")
    s.add_argument("--subject", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--size", type=int, default=256)
    s.add_argument("--inflight", type=int, default=1000, help="publishes whose acks are gathered together")
    s.add_argument("--rate", type=float, default=0, help="messages/s; 0 = as fast as possible")
    s.add_argument("--tick", type=float, default=0.1)
    s.add_argument("--stamp", action="store_true", help="start each payload with epoch ms (13 digits)")
    for role in ("map", "sink"):
        r = sub.add_parser(role)
        r.add_argument("--stream", required=True)
        r.add_argument("--durable", required=True)
        r.add_argument("--batch", type=int, default=500)
        if role == "map":
            r.add_argument("--out-subject", required=True)
        else:
            r.add_argument("--lat-subject")
    args = ap.parse_args()
    fn = {"source": source, "map": map_, "sink": sink}[args.role]
    asyncio.run(fn(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
