"""A map vertex written against docs/protocol.md with plain nats-py and no natsflow import:
upper-cases the payload. Proves a `udf: {command: [...]}` vertex needs only the protocol."""

import asyncio
import hashlib
import json
import os
import signal

import nats


async def main() -> None:
    d = json.loads(os.environ["NATSFLOW_DESCRIPTOR"])
    nc = await nats.connect(os.environ["NATS_URL"])
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=d["input"]["consumer"], stream=d["input"]["stream"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(d["limits"]["readBatchSize"], timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        acks = []
        for m in msgs:
            headers = dict(m.headers or {})
            origin = hashlib.sha256(headers["Nats-Msg-Id"].encode()).hexdigest()[:24]
            headers["Nats-Msg-Id"] = f"{d['vertex']}:{origin}:0"
            for out in d["outputs"]:
                acks.append(js.publish(out["subject"], m.data.upper(), headers=headers))
        await asyncio.gather(*acks)  # every output stored ...
        for m in msgs:
            await m.ack()  # ... before any input is acked
    await nc.drain()


asyncio.run(main())
