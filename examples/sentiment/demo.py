"""The quickstart: run the sentiment pipeline on an embedded NATS, post sentences, show results.

    python -m examples.sentiment.demo

Each vertex runs as its own process; positive sentences are printed by the `positive` log sink,
the rest go to a blackhole. Interactive use: `natsflow run examples/sentiment/pipeline.yaml`, then
`curl -d 'I love it' localhost:8080/vertices/in`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from framework.isb.names import stream_name
from framework.local.embedded import free_port
from framework.local.supervisor import Supervisor
from framework.transport.settings import NatsSettings

HERE = Path(__file__).resolve().parent
SENTENCES = [
    "I love how fast this pipeline is!",
    "The delivery was late and the box was crushed.",
    "What a wonderful, sunny morning.",
    "The meeting is at 10am.",
    "This is the worst support experience I have ever had.",
    "Great job, team: the launch went perfectly.",
]


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def post(url: str, text: str) -> int:
    req = urllib.request.Request(url, data=text.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


async def wait_drained(sup: Supervisor, pipeline: str, vertices: list[str], timeout: float = 30) -> None:
    nc = await sup.settings.connect("natsflow-demo")
    js = nc.jetstream()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [await js.stream_info(stream_name(pipeline, v)) for v in vertices]
            if all(i.state.messages == 0 for i in infos) and infos[0].state.last_seq >= len(SENTENCES):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("the pipeline did not finish within %ss" % timeout)
    finally:
        await nc.close()


async def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    port = 8080 if port_free(8080) else free_port()
    work = Path(tempfile.mkdtemp(prefix="natsflow-demo-"))
    spec = work / "pipeline.yaml"
    spec.write_text((HERE / "pipeline.yaml").read_text().replace("port: 8080", f"port: {port}"))
    sup = Supervisor(spec, NatsSettings.from_env(), data_dir=work / ".natsflow", grace=10)
    await sup.start()
    try:
        url = f"http://127.0.0.1:{port}/vertices/in"
        deadline = time.monotonic() + 30
        while True:  # the HTTP source process is still importing until it answers
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
        for text in SENTENCES:
            status = await asyncio.to_thread(post, url, text)
            print(f"POST {url} {text!r} -> {status}", flush=True)
        await wait_drained(sup, "sentiment", ["classify", "positive", "rest"])
        print("\nAll sentences classified; positive ones were printed by the 'positive' sink above.", flush=True)
    finally:
        await sup.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
