"""A map vertex written against docs/protocol.md with plain nats-py (identity, tagged `even` when
the payload's length is even), correct except for what PROTOCOL_BREAK names; the conformance
tests run it to show that each kit rule catches the fault it is about:

  utf8-keys         nothing broken: Nf-Keys written as raw UTF-8 JSON, which §3 allows
  ack-early         publishes without waiting for PubAcks, then acks its inputs (§4.3)
  bad-header-bytes  writes a header value that is not UTF-8 (§3), without waiting for PubAcks
  bad-watermark     publishes watermarks ahead of its input watermark (§9)
  clock-event-time  gives an input without Nf-Event-Time its own clock's time, not the store time (§3)
"""

import asyncio
import hashlib
import json
import os
import signal
import time

import nats

from framework.transport.client import FastClient, publish_many
from framework.transport.headers import encode_headers

BREAK = os.environ.get("PROTOCOL_BREAK", "")
RESERVED = {"Nats-Msg-Id", "Nf-Id", "Nf-Keys", "Nf-Event-Time"}


def matches(tags: dict | None, have: set[str]) -> bool:
    if not tags:
        return True
    hits = len(have & set(tags["values"]))
    return {"and": hits == len(tags["values"]), "not": hits == 0}.get(tags["operator"], hits > 0)


async def wait_for_room(js, out: dict, n: int, stop: asyncio.Event) -> None:
    while (await js.stream_info(out["stream"])).state.messages + n > out["softLimit"] and not stop.is_set():
        await asyncio.sleep(0.05)


async def main() -> None:
    d = json.loads(os.environ["NATSFLOW_DESCRIPTOR"])
    nc = FastClient()
    await nc.connect(os.environ["NATS_URL"])
    js = nc.jetstream()
    kv = await js.key_value(d["watermark"]["bucket"])
    sub = await js.pull_subscribe_bind(durable=d["input"]["consumer"], stream=d["input"]["stream"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(d["limits"]["readBatchSize"], timeout=0.5)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            continue
        per_out: dict[int, list[tuple[bytes, dict[str, str]]]] = {}
        dead = []
        for m in msgs:
            h = dict(m.headers or {})
            origin = hashlib.sha256(h["Nats-Msg-Id"].encode()).hexdigest()[:24]
            try:
                keys = json.loads(h.get("Nf-Keys") or "[]")
                assert isinstance(keys, list) and all(isinstance(k, str) for k in keys), "not a list of strings"
            except (ValueError, AssertionError) as exc:
                dead.append((m, {**{k: v for k, v in h.items() if not k.startswith("Nats-")},
                                 "Nats-Msg-Id": f"dlq:{d['vertex']}:{origin}", "Nf-Error": f"bad Nf-Keys: {exc}",
                                 "Nf-Error-Vertex": d["vertex"]}))
                continue
            out = {k: v for k, v in h.items() if k not in RESERVED and not k.startswith("Nats-")}
            # Missing envelope headers come from what a redelivery keeps (§3): msg id, store time.
            stored_ms = int(m.reply.split(".")[7]) // 1_000_000  # $JS.ACK.<stream>.<consumer>.<n>.<seq>.<seq>.<ns>...
            if BREAK == "clock-event-time":
                stored_ms = int(time.time() * 1000)
            out.update({"Nats-Msg-Id": f"{d['vertex']}:{origin}:0", "Nf-Id": h.get("Nf-Id") or h["Nats-Msg-Id"],
                        "Nf-Event-Time": h.get("Nf-Event-Time") or str(stored_ms)})
            if keys:
                out["Nf-Keys"] = json.dumps(keys, ensure_ascii=BREAK != "utf8-keys")
            tags = {"even" if len(m.data) % 2 == 0 else "odd"}
            for i, o in enumerate(d["outputs"]):
                if matches(o["tags"], tags):
                    per_out.setdefault(i, []).append((m.data, out))
        for i, items in per_out.items():
            await wait_for_room(js, d["outputs"][i], len(items), stop)
        if BREAK in ("ack-early", "bad-header-bytes"):
            raw = []
            for i, items in per_out.items():
                for data, h in items:
                    head = encode_headers(h)
                    if BREAK == "bad-header-bytes":
                        head = head[:-2] + b"X-Raw: caf\xe9\r\n\r\n"
                    raw.append((d["outputs"][i]["subject"], "", data, head))
            await publish_many(nc, raw)
            await nc.flush()  # sent, but no PubAck awaited
            acks = [js.publish(d["input"]["deadLetterSubject"], m.data, headers=h) for m, h in dead]
        else:
            acks = [js.publish(d["outputs"][i]["subject"], data, headers=h)
                    for i, items in per_out.items() for data, h in items]
            acks += [js.publish(d["input"]["deadLetterSubject"], m.data, headers=h) for m, h in dead]
        try:
            await asyncio.gather(*acks)
        except nats.js.errors.APIError:  # refused (a full stream): hand the batch back, try again later
            for m in msgs:
                await m.nak()
            await asyncio.sleep(0.1)
            continue
        for m in msgs:
            await m.ack()
        if BREAK == "bad-watermark":
            for o in d["outputs"]:
                ahead = {"wm": int(time.time() * 1000), "seq": 0, "ts": int(time.time() * 1000)}
                await kv.put(f"{d['vertex']}.{o['to']}.0.r1", json.dumps(ahead).encode())
    await nc.flush()  # the acks are out; nothing else is pending
    await nc.close()


asyncio.run(main())
