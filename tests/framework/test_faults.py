"""Faults of the server itself: the session's private nats-server is killed and restarted."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections import Counter

import asyncpg
import nats

from framework.local.embedded import EmbeddedNats
from tests.conftest import PipelineRunner, wait_for
from tests.framework.test_worker import gen, udf
from tests.vertices.conftest import TcpProxy
from tests.vertices.test_http_sink import all_through, feed
from tests.vertices.test_postgres import DSN as PG_DSN


async def test_nats_server_crash_mid_stream_loses_nothing(runner, nc, nats_server: EmbeddedNats):
    total = 20_000
    out_stream = f"OUT_{runner.name}"
    runner.write([gen("in", total, rpu=2000, duration="250ms"), udf("map", "identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"ackWait": "3s"})
    await runner.start_all()
    js = nc.jetstream()

    async def stored(n: int) -> bool:
        try:
            return (await js.stream_info(out_stream)).state.messages >= n
        except Exception:  # the stream does not exist yet, or the server is restarting
            return False

    await wait_for(lambda: stored(3000), 60, "3000 messages at the sink")
    nats_server.kill()
    nats_server.start()
    await wait_for(lambda: stored(total), 120, f"{total} messages at the sink after the restart")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    info = await js.stream_info(out_stream)
    assert info.state.messages == total
    fresh = await nats.connect(nats_server.url)
    try:
        psub = await fresh.jetstream().pull_subscribe(f"{runner.name}.done", durable=None, stream=out_stream)
        seqs = []
        while len(seqs) < total:
            for m in await psub.fetch(1000, timeout=5):
                seqs.append(json.loads(m.data)["seq"])
                await m.ack()  # the consumer stops at 1000 unacked
    finally:
        await fresh.close()
    assert sorted(seqs) == list(range(total))
    for v in ("in", "map", "out"):
        assert runner.procs[v].poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"


async def test_ten_server_crashes_with_a_flatmap_deliver_exactly_once(tmp_path):
    """kill -9 of nats-server (file store) ten times mid-stream: a crash loses JetStream's duplicate
    table, so an upstream retry can store an input a second time under a new stream sequence. Output
    ids derive from the input's own msg id, so both copies name their outputs alike and the sink's
    stream (dedup by data id) keeps each output once: 0 lost, 0 duplicated."""
    server = EmbeddedNats(tmp_path / "nats").start()
    runner = PipelineRunner(tmp_path, server.url)
    total, restarts = 20_000, 10
    out_stream = f"OUT_{runner.name}"
    try:
        runner.write([gen("in", total, rpu=300, duration="100ms"), udf("fan", "fan_two", kind="flatmap"),
                      udf("map", "identity"),
                      {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                     [{"from": "in", "to": "fan"}, {"from": "fan", "to": "map"}, {"from": "map", "to": "out"}],
                     limits={"ackWait": "3s", "readBatchSize": 200})
        await runner.start_all()
        client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = client.jetstream()

        async def stored() -> int:
            try:
                return (await js.stream_info(out_stream)).state.messages
            except Exception:  # the stream does not exist yet, or the server is restarting
                return 0

        started = time.monotonic()
        at_kill = []
        for k in range(restarts):
            floor = (k + 1) * 2 * total // (restarts + 2)  # spread the kills over the stream
            await wait_for(lambda: _at_least(stored, floor), 90, f"{floor} outputs before crash {k + 1}")
            at_kill.append(await stored())
            server.kill()
            server.start()
        await wait_for(lambda: _at_least(stored, 2 * total), 120, f"{2 * total} outputs after {restarts} crashes")
        await wait_for(lambda: runner.drained(client), 60, "buffers to drain")
        elapsed = time.monotonic() - started
        data_ids, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
        expected = {f"{n}:{i}".encode() for n in range(total) for i in (0, 1)}
        lost = len(expected - set(payloads))
        duplicated = len(payloads) - len(set(payloads))
        print(f"\n{restarts} server crashes at outputs {at_kill}: {2 * total} expected, {len(payloads)} stored, "
              f"lost {lost}, duplicated {duplicated}, {elapsed:.1f}s")
        assert assert_alive(runner) is None
        assert lost == 0 and duplicated == 0, (lost, duplicated)
        assert len(set(data_ids)) == len(data_ids) == 2 * total
        await client.close()
    finally:
        runner.stop_all()
        server.stop()


async def test_an_input_stored_again_after_a_crash_gets_the_same_output_ids(tmp_path):
    """What a server crash does to dedup, step by step: the flatmap consumes and acks inputs (a
    work-queue buffer deletes them), the server is killed, which empties its duplicate table, and
    the upstream writes the same inputs again, as a writer whose PubAcks were lost does. The
    second copies have new stream sequences; their outputs must carry the same msg and data ids
    as the first, so the sink's stream keeps every output once."""
    server = EmbeddedNats(tmp_path / "nats").start()
    runner = PipelineRunner(tmp_path, server.url)
    out_stream, n = f"OUT_{runner.name}", 300
    try:
        runner.write([gen("in", 0), udf("fan", "fan_two", kind="flatmap"),
                      {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                     [{"from": "in", "to": "fan"}, {"from": "fan", "to": "out"}])
        await runner.provision()
        runner.start("fan")
        runner.start("out")
        client = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        js = client.jetstream()

        async def write_inputs() -> list[int]:
            acks = [await js.publish(f"nf.{runner.name}.fan.in", json.dumps({"seq": i}).encode(),
                                     headers={"Nats-Msg-Id": f"in:run-{i}", "Nf-Id": f"run-{i}",
                                              "Nf-Event-Time": "1700000000000"}) for i in range(n)]
            assert not any(a.duplicate for a in acks)
            return [a.seq for a in acks]

        async def stored() -> int:
            try:
                return (await js.stream_info(out_stream)).state.messages
            except Exception:
                return 0

        first = await write_inputs()
        await wait_for(lambda: _at_least(stored, 2 * n), 30, f"{2 * n} outputs of the first copies")
        await wait_for(lambda: runner.drained(client), 30, "the flatmap to ack every input")
        server.kill()
        server.start()
        await wait_for(lambda: _at_least(stored, 2 * n), 30, "JetStream back after the restart")
        second = await write_inputs()  # the duplicate table is gone: stored again, new sequences
        assert set(first).isdisjoint(second)
        await wait_for(lambda: runner.drained(client), 60, "the second copies to be processed")
        data_ids, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
        assert sorted(payloads) == sorted(f"{i}:{k}".encode() for i in range(n) for k in (0, 1))
        assert len(set(data_ids)) == 2 * n
        await client.close()
    finally:
        runner.stop_all()
        server.stop()


async def test_a_sink_stalled_longer_than_ack_wait_writes_every_record_once(runner, nc):
    """Held means held: the network to PostgreSQL stalls for 2.5 × ackWait while the sink holds its
    batch in hand and a full read-ahead. Every fetched message stays in progress until it is acked,
    so none is redelivered: in insert mode into a table without keys, every record is one row
    (before, the read-ahead's ack wait ran out and those records were written twice)."""
    conn = await asyncpg.connect(PG_DSN)
    table = "nf_" + uuid.uuid4().hex[:10]
    await conn.execute(f"CREATE TABLE {table} (id int, nf_id text)")
    proxy = await TcpProxy(5432).start()
    n, ack_wait = 1500, 6.0
    consumer = (f"nf_{runner.name}_out", f"nf_{runner.name}_out")
    try:
        stream = await feed(nc, runner, n, lambda i: json.dumps({"id": i}).encode())
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/test"
        runner.write([{"name": "in", "source": {"jetstream": {"stream": stream}}},
                      {"name": "out", "sink": {"postgres": {"dsn": dsn, "table": table, "idColumn": "nf_id"}}}],
                     [{"from": "in", "to": "out"}], limits={"readBatchSize": 100, "ackWait": f"{ack_wait}s"})
        await runner.start_all()
        await wait_for(lambda: _rows(conn, table, 100), 30, "the first rows")
        proxy.freeze()
        stalled = time.monotonic()
        held = (await nc.jetstream().consumer_info(*consumer)).num_ack_pending
        await wait_for(lambda: time.monotonic() - stalled > 2.5 * ack_wait, 3 * ack_wait + 5,
                       "the stall to outlast the ack wait", interval=0.5)
        redelivered = (await nc.jetstream().consumer_info(*consumer)).num_redelivered
        proxy.thaw()
        await wait_for(lambda: all_through(nc, runner, stream, n), 60, f"{n} records through")
        rows = await conn.fetch(f"SELECT id, count(*) AS c FROM {table} GROUP BY id")
        copies = Counter({r["id"]: r["c"] for r in rows})
        duplicated = sum(c - 1 for c in copies.values())
        print(f"\nsink stalled {time.monotonic() - stalled:.0f}s (ackWait {ack_wait:.0f}s) holding {held}: "
              f"redelivered {redelivered}; {n} records, {len(copies)} written, duplicated {duplicated}")
        assert held > 100, "the stall must catch the sink holding more than the batch in hand"
        assert redelivered == 0
        assert sorted(copies) == list(range(n)) and duplicated == 0
    finally:
        proxy.thaw()
        await proxy.stop()
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()


async def _rows(conn, table: str, n: int) -> bool:
    return await conn.fetchval(f"SELECT count(*) FROM {table}") >= n


async def test_sigkill_storm_of_every_vertex_delivers_exactly_once(runner, nc):
    """Random SIGKILLs of the source, the flatmap, the map and the sink, each restarted at once,
    while 10,000 upstream records become 20,000 outputs: every output arrives once (by payload and
    by data id) at a `jetstream` sink, and every vertex is alive at the end."""
    n, kills = 10_000, 24
    js = nc.jetstream()
    upstream, out_stream = f"SRC_{runner.name}", f"OUT_{runner.name}"
    await js.add_stream(name=upstream, subjects=[f"{runner.name}.src"])
    for start in range(0, n, 1000):
        await asyncio.gather(*(js.publish(f"{runner.name}.src", json.dumps({"seq": i}).encode())
                               for i in range(start, min(start + 1000, n))))
    runner.write([{"name": "in", "source": {"jetstream": {"stream": upstream}}},
                  udf("fan", "fan_two", kind="flatmap"), udf("map", "slow_identity"),
                  {"name": "out", "sink": {"jetstream": {"stream": out_stream, "subject": f"{runner.name}.done"}}}],
                 [{"from": "in", "to": "fan"}, {"from": "fan", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"ackWait": "2s", "readBatchSize": 100})
    slow = {"SLOW_MAP_SECONDS": "0.0005"}  # ~2,000 outputs/s: the storm lands mid-stream
    await runner.start_all(**slow)

    async def stored() -> int:
        try:
            return (await js.stream_info(out_stream)).state.messages
        except Exception:
            return 0

    rng = random.Random(11)
    started = time.monotonic()
    killed = Counter()
    await wait_for(lambda: _at_least(stored, 500), 60, "the first outputs")
    for k in range(kills):
        if await stored() >= 2 * n:
            break
        victim = rng.choice(["in", "fan", "map", "out"])
        runner.kill(victim)
        killed[victim] += 1
        runner.start(victim, **slow)
        # the next kill once the pipeline moved on (and, now and then, right away: kills in a burst)
        if k % 4 != 3:
            floor = await stored() + 200
            await wait_for(lambda: _at_least(stored, min(floor, 2 * n)), 60, f"progress after kill {k + 1}")
    assert sum(killed.values()) >= kills // 2, "the stream ended before the storm did"
    await wait_for(lambda: _at_least(stored, 2 * n), 120, f"{2 * n} outputs")
    await wait_for(lambda: runner.drained(nc), 60, "buffers to drain")
    data_ids, payloads = await _read_all(js, out_stream, f"{runner.name}.done")
    expected = {f"{i}:{k}".encode() for i in range(n) for k in (0, 1)}
    lost, duplicated = len(expected - set(payloads)), len(payloads) - len(set(payloads))
    print(f"\nSIGKILL storm {dict(killed)}: {2 * n} outputs expected, {len(payloads)} stored, lost {lost}, "
          f"duplicated {duplicated}, {time.monotonic() - started:.1f}s")
    assert lost == 0 and duplicated == 0 and len(set(data_ids)) == 2 * n
    assert_alive(runner)


async def _at_least(count, n: int) -> bool:
    return await count() >= n


async def _read_all(js, stream: str, subject: str) -> tuple[list[str], list[bytes]]:
    """Every message of a limits-retention stream: (data ids, payloads)."""
    psub = await js.pull_subscribe(subject, durable=None, stream=stream)
    ids, payloads = [], []
    while True:
        try:
            msgs = await psub.fetch(1000, timeout=2)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            await psub.unsubscribe()  # else the test client's drain waits out its 30 s timeout on it
            return ids, payloads
        for m in msgs:
            ids.append(m.headers["Nf-Id"])
            payloads.append(m.data)
            await m.ack()


def assert_alive(runner: PipelineRunner) -> None:
    for v, proc in runner.procs.items():
        assert proc.poll() is None, f"vertex {v} died: {runner.log(v)[-2000:]}"
