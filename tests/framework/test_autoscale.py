"""`natsflow up`: replicas follow lag (KEDA's rule), down to zero and back, losing nothing."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import yaml

from framework.local.supervisor import Supervisor
from framework.transport.settings import NatsSettings
from tests.conftest import REPO, Collector, wait_for


async def test_scale_up_drain_to_zero_and_wake(tmp_path, nc, nats_url, monkeypatch):
    name = "as" + os.urandom(3).hex()
    doc = {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            # the cooldown never undercuts the ack wait (a killed replica's messages must come back)
            "limits": {"readBatchSize": 10, "ackWait": "3s"},
            "vertices": [
                {"name": "in", "source": {"nats": {"subject": f"{name}.in"}}},
                {"name": "slow", "udf": {"map": {"handler": "tests.udfs:slow_identity"}},
                 "scale": {"min": 0, "max": 4, "lagThreshold": 50, "pollingInterval": "300ms",
                           "cooldownPeriod": "3s"}},
                {"name": "out", "sink": {"nats": {"subject": f"{name}.out"}}},
            ],
            "edges": [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}],
        },
    }
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # the supervisor's children import tests.udfs
    monkeypatch.setenv("SLOW_MAP_SECONDS", "0.02")
    sup = Supervisor(f, NatsSettings(url=nats_url), grace=10, out=open(tmp_path / "up.log", "w"), autoscale=True)
    out = await Collector().start(nc, f"{name}.out")
    await sup.start()
    try:
        slow = sup.groups["slow"]
        assert len(slow) == 0  # min 0 and no lag: nothing runs

        async def source_listening() -> bool:
            await nc.publish(f"{name}.in", b"probe", headers={"Nats-Msg-Id": "probe"})
            return len(out.msgs) >= 1

        await wait_for(source_listening, 30, "the first message through (wakes slow from zero)")
        peak = 0
        for i in range(800):
            await nc.publish(f"{name}.in", str(i).encode(), headers={"Nats-Msg-Id": f"m{i}"})

        def track() -> bool:
            nonlocal peak
            peak = max(peak, len(slow))
            return len(out.msgs) >= 801

        await wait_for(track, 90, "800 messages through the slow vertex", interval=0.05)
        assert peak >= 3, f"replicas peaked at {peak}"
        counts = Counter(m.data for m in out.msgs)
        assert len(counts) == 801 and max(counts.values()) == 1  # nothing lost, nothing twice

        await wait_for(lambda: len(slow) == 0, 30, "slow to scale to zero after the cooldown")
        t0 = asyncio.get_running_loop().time()
        await nc.publish(f"{name}.in", b"wake", headers={"Nats-Msg-Id": "wake"})
        await wait_for(lambda: any(m.data == b"wake" for m in out.msgs), 10, "the wake-up message")
        woke_in = asyncio.get_running_loop().time() - t0
        assert len(slow) >= 1
        # one polling interval (0.3 s) plus a worker process start (its Python imports: about 1 s on
        # a quiet machine, over 2 s with both cores busy)
        assert woke_in < 4.0, f"took {woke_in:.1f}s from zero"
        reasons = [d[4] for d in sup.decisions if d[1] == "slow"]
        assert any(r.startswith("activated") for r in reasons) and any("cooldown" in r for r in reasons)
        print(f"autoscale: peak {peak} replicas, woke from zero in {woke_in:.2f}s")
    finally:
        await sup.stop()


async def test_changed_handler_rolls_without_loss_under_traffic(tmp_path, nc, nats_url, monkeypatch):
    name = "ru" + os.urandom(3).hex()
    total = 4000

    def doc(handler: str) -> dict:
        return {
            "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
            "spec": {
                "limits": {"readBatchSize": 50},
                "vertices": [
                    {"name": "in", "source": {"generator": {"total": total, "rpu": 100, "duration": "250ms"}}},
                    {"name": "map", "udf": {"map": {"handler": f"tests.udfs:{handler}"}},
                     "scale": {"min": 1, "max": 1, "pollingInterval": "500ms"}},
                    {"name": "out", "sink": {"nats": {"subject": f"{name}.out"}}, "scale": {"min": 1}},
                ],
                "edges": [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
            },
        }

    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc("version_a")))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    log = tmp_path / "up.log"
    sup = Supervisor(f, NatsSettings(url=nats_url), grace=10, out=open(log, "w"), autoscale=True)
    out = await Collector().start(nc, f"{name}.out")
    await sup.start()
    try:
        await out.wait_count(800, timeout=60)
        old_pid = sup.groups["map"].replicas[0].proc.pid
        f.write_text(yaml.safe_dump(doc("version_b")))  # what a user's editor does
        await wait_for(lambda: sup.groups["map"].replicas[0].proc.pid != old_pid, 30, "the map to be rolled")
        await out.wait_count(total, timeout=90)
        await wait_for(lambda: len(out.msgs) == total and sup.pipeline.vertex("map").udf.map.handler.endswith("b"),
                       10, "the update to be applied")
    finally:
        await sup.stop()
    docs = [json.loads(m.data) for m in out.msgs]
    seqs = Counter(d["seq"] for d in docs)
    assert len(seqs) == total and max(seqs.values()) == 1  # nothing lost or doubled across the roll
    versions = [d["version"] for d in docs]
    assert versions[0] == "a" and versions[-1] == "b"
    text = log.read_text()
    reads = {label: json.loads(line.rsplit("stats ", 1)[1])["forwarder_read_total"]
             for label in ("[map]", "[map#1]") for line in text.splitlines()
             if line.startswith(label + " ") and "stopped; stats" in line}
    assert reads["[map]"] > 0 and reads["[map#1]"] > 0 and reads["[map]"] + reads["[map#1]"] == total
