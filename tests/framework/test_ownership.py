"""Partition leases on a real KV bucket: never two holders of a valid lease for one partition, even
when a holder freezes (stops renewing without releasing), and every partition held again after."""

from __future__ import annotations

import asyncio
import time
import uuid

from framework.runtime.ownership import PartitionLeases, bucket_name, provision_bucket
from tests.conftest import wait_for

PARTS = list(range(8))
TTL = 1.0


class Replica:
    """A PartitionLeases plus what the reduce does with it: releases what is marked for release
    (at once; the reduce would first hand its inputs back) and forgets what it can no longer prove."""

    def __init__(self, kv, name: str):
        self.leases = PartitionLeases(kv, "agg", PARTS, TTL, name)
        self.name = name
        self._task: asyncio.Task | None = None

    async def start(self) -> "Replica":
        await self.leases.start()
        self._task = asyncio.create_task(self._follow())
        return self

    async def _follow(self) -> None:
        while True:
            await self.leases.changed.wait()
            self.leases.changed.clear()
            for part, lease in list(self.leases.owned.items()):
                if not lease.valid():
                    self.leases.forget(part)
                elif lease.releasing:
                    await self.leases.release(part)

    def valid(self) -> set[int]:
        return {p for p, lease in self.leases.owned.items() if lease.valid()}

    def freeze(self) -> None:
        """A hung process: nothing renews, nothing is released."""
        self.leases._task.cancel()
        self._task.cancel()

    async def stop(self) -> None:
        self.leases.claiming = False
        for part in list(self.leases.owned):
            await self.leases.release(part)
        self._task.cancel()
        await self.leases.close()


async def test_a_partition_never_has_two_valid_holders(nc):
    js = nc.jetstream()
    pipeline = "own" + uuid.uuid4().hex[:6]
    await provision_bucket(js, pipeline)
    kv = await js.key_value(bucket_name(pipeline))
    replicas: list[Replica] = []
    overlaps: list[tuple] = []
    holders: dict[int, list[str]] = {p: [] for p in PARTS}  # every change of valid holder, in order
    samples = 0

    async def sample() -> None:
        nonlocal samples
        while True:
            samples += 1
            for p in PARTS:
                now = [r.name for r in replicas if p in r.valid()]
                if len(now) > 1:
                    overlaps.append((time.monotonic(), p, now))
                if now and (not holders[p] or holders[p][-1] != now[0]):
                    holders[p].append(now[0])
            await asyncio.sleep(0.005)

    def split(expected: dict[str, int]):
        return lambda: {r.name: len(r.valid()) for r in replicas if r.valid()} == expected

    sampler = asyncio.create_task(sample())
    began = time.monotonic()
    try:
        a = await Replica(kv, "a").start()
        replicas.append(a)
        await wait_for(split({"a": 8}), 10, "a to hold every partition")
        b = await Replica(kv, "b").start()
        replicas.append(b)
        await wait_for(split({"a": 4, "b": 4}), 10, "a and b to split")
        b.freeze()  # b's leases run out on b's side before a may take them
        await wait_for(split({"a": 8}), 10, "a to take the frozen b's partitions")
        c = await Replica(kv, "c").start()
        replicas.append(c)
        await wait_for(split({"a": 4, "c": 4}), 10, "a and c to split")
        await a.stop()
        await wait_for(split({"c": 8}), 10, "c to take a's partitions")
    finally:
        sampler.cancel()
        for r in replicas:
            r.freeze()
    moves = sum(len(h) for h in holders.values()) - len(PARTS)
    assert not overlaps, overlaps[:5]
    assert moves >= 16, holders  # b took 4, a took them back, c took 4, c took a's 4
    assert samples > 100
    print(f"{moves} moves, {samples} samples without two holders, {time.monotonic() - began:.1f}s")
