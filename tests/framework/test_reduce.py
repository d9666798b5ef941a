"""Windowed reduce in event time, with explicit timestamps (T0 = 2024-01-01T00:00:00Z)."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from datetime import datetime

import pytest
import yaml

from framework.local.supervisor import Supervisor
from framework.transport.settings import NatsSettings
from tests.conftest import REPO, Collector, wait_for

T0 = 1_704_067_200  # seconds


async def publish(js, subject: str, events: list[tuple[str, int, int]]) -> None:
    """events: (key, seconds after T0, value)."""
    for key, t, v in events:
        await js.publish(subject, json.dumps({"v": v}).encode(),
                         headers={"Nf-Event-Time": str((T0 + t) * 1000), "Nf-Keys": json.dumps([key])})


def results(c: Collector) -> set[tuple]:
    out = set()
    for m in c.msgs:
        r = json.loads(m.data)
        out.add((tuple(r["keys"]), r["start"] - T0, r["end"] - T0, r["count"], r["sum"]))
    return out


def reduce_pipeline(runner, window: dict, late_edge: bool = False, lateness: str = "0s", partitions: int = 1,
                    watermark: dict | None = None, keyed: bool = True, handler: str = "window_sum",
                    udf_extra: dict | None = None, reduce_extra: dict | None = None, limits: dict | None = None,
                    scale: dict | None = None):
    vertices = [
        {"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "agg", "udf": {"reduce": {"handler": f"tests.udfs:{handler}", "window": window,
                                           "allowedLateness": lateness, "partitions": partitions}}},
        {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}},
    ]
    edges = [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}]
    if keyed is False:
        vertices[1]["udf"]["reduce"]["keyed"] = False
    vertices[1]["udf"].update(udf_extra or {})
    vertices[1]["udf"]["reduce"].update(reduce_extra or {})
    if scale is not None:
        vertices[1]["scale"] = scale
    if late_edge:
        vertices.append({"name": "tardy", "sink": {"nats": {"subject": f"{runner.name}.late"}}})
        edges.append({"from": "agg", "to": "tardy", "late": True})
    runner.write(vertices, edges, watermark=watermark, limits=limits)


async def consumed(nc, runner) -> None:
    """The source has read and stored everything published so far (each phase is its own batch,
    so the source's watermark, the minimum event time of a batch, steps as the test intends)."""
    await wait_for(lambda: runner.source_consumed(nc, f"SRC_{runner.name}"), 30, "the source to consume the phase")


async def source_stream(nc, runner):
    js = nc.jetstream()
    await js.add_stream(name=f"SRC_{runner.name}", subjects=[f"{runner.name}.src"])
    return js


async def test_fixed_windows_lateness_and_late_edge(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    late = await Collector().start(nc, f"{runner.name}.late")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, late_edge=True, lateness="5s")
    await runner.start_all()
    subj = f"{runner.name}.src"
    # phase 1: a and b, one event per second in [0, 35)
    await publish(js, subj, [(k, t, t) for t in range(35) for k in ("a", "b")])
    await consumed(nc, runner)
    # phase 2: the watermark reaches 40 s: [0,10) [10,20) close (end + 5 s lateness <= 40), and [20,30) too
    await publish(js, subj, [("a", 40, 100)])
    await out.wait_count(6)
    # phase 3: 25 s is now beyond lateness for [20,30) -> late edge; 33 s is out of order but within
    # lateness of [30,40), which is still open -> counted in
    await publish(js, subj, [("a", 25, 1000), ("a", 33, 1000)])
    await late.wait_count(1)
    await consumed(nc, runner)
    # phase 4: a far event (other key) moves the watermark on and closes the rest
    await publish(js, subj, [("z", 500, 0)])
    await out.wait_count(9)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 20, "buffers to drain")
    expected = set()
    for k in ("a", "b"):
        for start in (0, 10, 20):
            expected.add(((k,), start, start + 10, 10, sum(range(start, start + 10))))
        extra = 1000 if k == "a" else 0
        expected.add(((k,), 30, 40, 5 + (k == "a"), sum(range(30, 35)) + extra))
    expected.add((("a",), 40, 50, 1, 100))
    assert results(out) == expected
    assert len(out.msgs) == 9
    assert [json.loads(m.data)["v"] for m in late.msgs] == [1000]
    assert int(late.msgs[0].headers["Nf-Event-Time"]) == (T0 + 25) * 1000
    first = next(m for m in out.msgs if json.loads(m.data)["start"] == T0)
    assert int(first.headers["Nf-Event-Time"]) == (T0 + 10) * 1000  # output event time = window end


async def run_scenario(runner, nc, window: dict, events, flush: int = 1000, expect: int | None = None,
                       **opts) -> set[tuple]:
    """Publish `events` as one phase, then a far event of key 'zz' that closes every window."""
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, window, **opts)
    await runner.start_all(**opts.pop("env", {}))
    await publish(js, f"{runner.name}.src", events)
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("zz", flush, 0)])
    await out.wait_count(expect)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 20, "buffers to drain")
    got = results(out)
    assert len(out.msgs) == len(got) == expect, "duplicate window results"
    return got


async def test_sliding_windows(runner, nc):
    events = [("k", t, t) for t in (1, 4, 6, 12)]
    got = await run_scenario(runner, nc, {"sliding": {"length": "10s", "slide": "5s"}}, events, expect=4)
    # windows [-5,5) [0,10) [5,15) [10,20) contain {1,4} {1,4,6} {6,12} {12}
    assert got == {(("k",), -5, 5, 2, 5), (("k",), 0, 10, 3, 11), (("k",), 5, 15, 2, 18), (("k",), 10, 20, 1, 12)}


async def test_session_windows(runner, nc):
    events = [("u", 0, 1), ("u", 3, 2), ("u", 20, 4), ("v", 2, 8), ("u", 7, 16)]
    got = await run_scenario(runner, nc, {"session": {"timeout": "5s"}}, events, expect=3)
    # u: 0,3,7 chain within 5 s -> [0, 12); 20 alone -> [20, 25); v: [2, 7)
    assert got == {(("u",), 0, 12, 3, 19), (("u",), 20, 25, 1, 4), (("v",), 2, 7, 1, 8)}


async def test_idle_source_advances_the_watermark(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}},
                    watermark={"idleSource": {"threshold": "1s", "incrementBy": "20s"}})
    await runner.start_all()
    await publish(js, f"{runner.name}.src", [("a", t, 1) for t in range(15)])
    await out.wait_count(2, timeout=30)  # no more data: only the idle source can close [10,20)
    assert results(out) == {(("a",), 0, 10, 10, 10), (("a",), 10, 20, 5, 5)}


async def test_unkeyed_windows_merge_all_keys(runner, nc):
    events = [("a", 1, 1), ("b", 2, 2), ("c", 3, 4)]
    got = await run_scenario(runner, nc, {"fixed": {"length": "10s"}}, events, expect=1, keyed=False)
    assert got == {((), 0, 10, 3, 7)}


def expected_fixed(keys, seconds: int) -> set[tuple]:
    return {((k,), s, s + 10, 10, sum(range(s, s + 10))) for k in keys for s in range(0, seconds, 10)}


async def lease_owners(nc, pipeline: str) -> dict[int, str]:
    """partition -> replica id holding its lease ("" = released), from the KV bucket."""
    kv = await nc.jetstream().key_value(f"nf_{pipeline}_leases")
    try:
        keys = await kv.keys()
    except Exception:  # no keys yet
        return {}
    out = {}
    for key in keys:
        if ".p." in key:
            out[int(key.rsplit(".", 1)[1])] = json.loads((await kv.get(key)).value)["owner"]
    return out


async def owners_are(nc, runner, expected: dict[str, int], partitions: int) -> dict[int, str] | None:
    """The leases are split as `expected` (replica -> number of partitions), every partition owned."""
    owners = await lease_owners(nc, runner.name)
    counts = Counter(owners.values())
    return owners if len(owners) == partitions and dict(counts) == expected else None


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def reading_intervals(runner, replicas: list[str], killed: dict[str, datetime],
                      vertex: str = "agg") -> dict[int, list[tuple]]:
    """From each replica's log: per partition, the (start, end, replica) spans in which it read
    the partition's consumer. The start is logged before its first pull, the end after its reader
    is closed (or, for a killed replica, the moment of the kill)."""
    spans: dict[int, list[tuple]] = {}
    for r in replicas:
        opened: dict[int, datetime] = {}
        for line in runner.log(f"{vertex}#{r}").splitlines():
            m = LOG_TIME.match(line)
            found = re.search(r"partition (\d+): (reading|stopped reading)", line)
            if not (m and found):
                continue
            at, part = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), int(found.group(1))
            if found.group(2) == "reading":
                assert part not in opened, f"{r} opened partition {part} twice"
                opened[part] = at
            else:
                spans.setdefault(part, []).append((opened.pop(part), at, r))
        for part, at in opened.items():  # still reading when the test ended it
            end = killed.get(r, datetime.max)
            spans.setdefault(part, []).append((at, end, r))
    return spans


def assert_one_reader_at_a_time(spans: dict[int, list[tuple]]) -> None:
    for part, ss in spans.items():
        ss = sorted(ss)
        for (s1, e1, r1), (s2, e2, r2) in zip(ss, ss[1:]):
            assert s2 >= e1, f"partition {part}: {r2} started reading at {s2} while {r1} read it until {e1}"


async def test_keyed_partitions_across_two_replicas(runner, nc):
    """Two replicas started together split the 4 partitions by leases, 2 each, and both work."""
    keys = [f"k{i}" for i in range(8)]
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, partitions=4)
    await runner.provision()
    for v in ("out", "in"):
        runner.start(v)
    for r in ("0", "1"):
        runner.start("agg", replica=r, NATSFLOW_REPLICA_ID=f"r{r}")
    await wait_for(lambda: owners_are(nc, runner, {"r0": 2, "r1": 2}, 4), 30, "two partitions per replica")
    await publish(js, f"{runner.name}.src", [(k, t, t) for t in range(30) for k in keys])
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("zz", 1000, 0)])
    await out.wait_count(24)
    assert results(out) == expected_fixed(keys, 30) and len(out.msgs) == 24
    for r in ("0", "1"):  # both replicas did part of the work
        assert await runner.terminate(f"agg#{r}") == 0
        log = runner.log(f"agg#{r}")
        assert json.loads(log.rsplit("stats ", 1)[1].splitlines()[0])["forwarder_read_total"] > 0
    assert_one_reader_at_a_time(reading_intervals(runner, ["0", "1"], {}))


async def test_partitions_move_between_replicas_mid_stream_with_exact_sums(runner, nc):
    """A keyed reduce of 6 partitions, 12 keys, 10 s windows over 120 s of event time (1,440
    events, 144 results). Replica A alone; B joins (A hands 3 partitions over, with their held
    inputs); B is SIGKILLed while holding inputs (its partitions go back to A after the 2 s lease
    ttl and the 2 s ack wait); C joins (A hands 3 over); A gets SIGTERM while holding inputs (C
    takes all). Every (key, window) sum is exact and emitted once, and no partition ever had two
    readers at once."""
    began = time.monotonic()
    keys, parts = [f"k{i}" for i in range(12)], 6
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, partitions=parts, reduce_extra={"leaseTtl": "2s"},
                    limits={"ackWait": "2s", "readBatchSize": 50}, scale={"max": 3})
    await runner.provision()
    for v in ("out", "in"):
        runner.start(v)
    subj = f"{runner.name}.src"

    def phase(n: int) -> list[tuple[str, int, int]]:  # 30 s of event time; values differ per key
        return [(k, t, t * 100 + i) for t in range(30 * n, 30 * n + 30) for i, k in enumerate(keys)]

    async def held_by(replica: str) -> int:
        owners = await lease_owners(nc, runner.name)
        total = 0
        for part, owner in owners.items():
            if owner == replica:
                info = await js.consumer_info(f"nf_{runner.name}_agg_p{part}", f"nf_{runner.name}_agg_p{part}")
                total += info.num_ack_pending
        return total

    runner.start("agg", replica="A", NATSFLOW_REPLICA_ID="A")
    await wait_for(lambda: owners_are(nc, runner, {"A": 6}, parts), 30, "A to own every partition")
    await publish(js, subj, phase(0))
    await consumed(nc, runner)
    # B joins: A hands three partitions over, with the phase-0 inputs it holds in open windows.
    runner.start("agg", replica="B", NATSFLOW_REPLICA_ID="B")
    await wait_for(lambda: owners_are(nc, runner, {"A": 3, "B": 3}, parts), 30, "A and B to split the partitions")
    await publish(js, subj, phase(1))
    await consumed(nc, runner)
    await out.wait_count(36)  # phase 0's windows, closed by A and B
    held = await wait_for(lambda: held_by("B"), 20, "B to hold inputs in open windows")
    runner.kill("agg#B")
    killed = {"B": datetime.now()}
    await publish(js, subj, phase(2))  # arrives while B's partitions have no reader
    await wait_for(lambda: owners_are(nc, runner, {"A": 6}, parts), 30, "B's partitions to come back to A")
    await consumed(nc, runner)
    await out.wait_count(72)  # phase 1's windows, B's part rebuilt by A from redelivered inputs
    runner.start("agg", replica="C", NATSFLOW_REPLICA_ID="C")
    await wait_for(lambda: owners_are(nc, runner, {"A": 3, "C": 3}, parts), 30, "A and C to split the partitions")
    await publish(js, subj, phase(3))
    await consumed(nc, runner)
    assert await wait_for(lambda: held_by("A"), 20, "A to hold inputs in open windows")
    assert await runner.terminate("agg#A") == 0
    await wait_for(lambda: owners_are(nc, runner, {"C": 6}, parts), 30, "C to own every partition")
    await publish(js, subj, [("zz", 1000, 0)])
    await out.wait_count(144, timeout=60)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 20, "buffers to drain")
    expected = {((k,), s, s + 10, 10, sum(t * 100 + i for t in range(s, s + 10)))
                for i, k in enumerate(keys) for s in range(0, 120, 10)}
    assert results(out) == expected  # every (key, window) present with its exact count and sum
    assert len(out.msgs) == 144 and len(set(out.ids)) == 144, f"{len(out.msgs) - 144} duplicate results"
    spans = reading_intervals(runner, ["A", "B", "C"], killed)
    assert_one_reader_at_a_time(spans)
    moves = sum(len(ss) for ss in spans.values()) - parts
    assert moves >= 12, spans  # B took 3, A took B's 3 back, C took 3, C took A's 3
    print(f"partition moves {moves}, B held {held} at its kill, {time.monotonic() - began:.1f}s")


async def test_sigkill_reduce_mid_window_gives_identical_output(runner, nc):
    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    # the restarted replica takes the dead one's partition once its lease has run out (2 s)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, reduce_extra={"leaseTtl": "2s"},
                    limits={"ackWait": "2s", "readBatchSize": 100})
    await runner.start_all()
    await publish(js, f"{runner.name}.src", [(k, t, t) for t in range(300) for k in ("a", "b")])
    await out.wait_count(6)
    runner.kill("agg")
    before = len(out.msgs)
    assert before < 60, "the kill came after every window had closed"
    runner.start("agg")
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("zz", 1000, 0)])
    await out.wait_count(60, timeout=60)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), 30, "buffers to drain")
    assert results(out) == expected_fixed(("a", "b"), 300)
    assert len(out.msgs) == 60, f"{len(out.msgs) - 60} duplicate results"


@pytest.mark.parametrize("handler", ["window_sum_stream", "WindowSum"])
async def test_async_generator_and_class_handlers(runner, nc, handler):
    events = [("a", 1, 1), ("a", 2, 2), ("b", 3, 4)]
    got = await run_scenario(runner, nc, {"fixed": {"length": "10s"}}, events, expect=2, handler=handler)
    assert got == {(("a",), 0, 10, 2, 3), (("b",), 0, 10, 1, 4)}


def test_watermark_fetcher_keeps_the_entry_in_force_and_waits_for_silent_writers():
    from framework.watermark.fetcher import WatermarkFetcher

    f = WatermarkFetcher(kv=None, to_vertex="agg", partition=0, timeout=10)
    import time as _t

    now = int(_t.time() * 1000)
    for i in range(1, 400):  # a writer far ahead of the reader
        f.observe("src.agg.0.r1", {"wm": i * 10, "seq": i, "ts": now})
    assert f.compute(30) == 300
    assert f.compute(31) == 310  # progress continues although many newer entries were thinned
    f.observe("dead.agg.0.r2", {"wm": 100, "seq": 500, "ts": now - 60_000})  # silent, with unread data
    assert f.compute(40) == 310  # held back: the silent writer's messages up to seq 500 are unread
    assert f.compute(600) == 3990  # read past them: the silent writer is dropped


async def test_up_scales_a_keyed_reduce_out_and_in_with_exact_sums(tmp_path, nc, nats_url, monkeypatch):
    """`natsflow up` on a reduce with scale.max 3: the inputs it holds in open windows are lag, so
    it starts replicas, which take partitions over; when the windows close it drains them again
    (SIGTERM: each hands its partitions back). 8 keys x 9 windows (+ the probe's), each sum exact
    and once."""
    name = "ur" + uuid.uuid4().hex[:6]
    keys = [f"k{i}" for i in range(8)]
    doc = {
        "apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": name},
        "spec": {
            "limits": {"readBatchSize": 50, "ackWait": "3s"},
            "vertices": [
                {"name": "in", "source": {"nats": {"subject": f"{name}.in"}}},
                {"name": "agg", "udf": {"reduce": {"handler": "tests.udfs:window_sum", "window": {"fixed": {"length": "10s"}},
                                                   "partitions": 4, "leaseTtl": "2s"}},
                 "scale": {"min": 1, "max": 3, "lagThreshold": 20, "pollingInterval": "300ms"}},
                {"name": "out", "sink": {"nats": {"subject": f"{name}.out"}}, "scale": {"min": 1}},
            ],
            "edges": [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}],
        },
    }
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    log = tmp_path / "up.log"
    sup = Supervisor(f, NatsSettings(url=nats_url), grace=10, out=open(log, "w"), autoscale=True)
    out = await Collector().start(nc, f"{name}.out")

    stored = 0

    async def feed(events) -> None:
        """Publish, then wait until the source stored them all (each phase its own batches, so
        the source's watermark steps as intended)."""
        nonlocal stored
        for key, t, v in events:
            await nc.publish(f"{name}.in", json.dumps({"v": v}).encode(),
                             headers={"Nf-Event-Time": str((T0 + t) * 1000), "Nf-Keys": json.dumps([key]),
                                      "Nats-Msg-Id": f"{key}:{t}"})
        stored += len(events)

        async def all_stored() -> bool:
            infos = [await nc.jetstream().stream_info(f"nf_{name}_agg_p{i}") for i in range(4)]
            return sum(i.state.last_seq for i in infos) == stored

        await wait_for(all_stored, 30, f"{stored} events stored by the source")

    await sup.start()
    try:
        agg = sup.groups["agg"]
        assert len(agg) == 1

        async def source_listening() -> bool:  # core NATS: what comes before the subscription is lost
            await nc.publish(f"{name}.in", b'{"v": 0}', headers={"Nf-Event-Time": str(T0 * 1000),
                                                                "Nf-Keys": '["probe"]', "Nats-Msg-Id": "probe"})
            infos = [await nc.jetstream().stream_info(f"nf_{name}_agg_p{i}") for i in range(4)]
            return sum(i.state.last_seq for i in infos) == 1

        await wait_for(source_listening, 30, "the source to listen", interval=0.2)
        stored = 1
        peak = 0

        def replicas_at_least(n: int):
            def check() -> bool:
                nonlocal peak
                peak = max(peak, len(agg))
                return len(agg) >= n
            return check

        await feed([(k, t, t) for t in range(30) for k in keys])  # held in open windows: lag
        await wait_for(replicas_at_least(2), 30, "the reduce to scale out on held inputs")

        async def spread() -> bool:
            owners = await lease_owners(nc, name)
            return len(set(owners.values()) - {""}) >= 2

        await wait_for(spread, 30, "the partitions to spread over the new replicas")
        for n in (1, 2):
            await feed([(k, t, t) for t in range(30 * n, 30 * n + 30) for k in keys])
        await feed([("zz", 1000, 0)])
        await out.wait_count(73, timeout=60)
        await wait_for(lambda: len(agg) == 1, 60, "the reduce to scale back in")
    finally:
        await sup.stop()
    assert results(out) == expected_fixed(keys, 90) | {(("probe",), 0, 10, 1, 0)} and len(out.msgs) == 73
    text = log.read_text()
    readers = {line.split(" ", 1)[0] for line in text.splitlines()
               if line.startswith("[agg") and "stopped; stats" in line
               and json.loads(line.rsplit("stats ", 1)[1])["forwarder_read_total"] > 0}
    assert len(readers) >= 2, readers  # the partitions moved: more than one replica read inputs
    moves = text.count("stopped reading (handed over)")
    decisions = [(a, b) for _, v, a, b, _ in sup.decisions if v == "agg"]
    assert any(b > a for a, b in decisions) and any(b < a for a, b in decisions), decisions
    print(f"up: peak {peak} reduce replicas, {moves} graceful partition moves, decisions {decisions}")


async def http_reduce(runner, nc, watermark: dict | None = None):
    """HTTP source -> keyed reduce (2 s fixed windows) -> nats sink; returns the POST url and the
    sink's collector once the source listens."""
    from framework.local.embedded import free_port  # noqa: PLC0415
    from tests.vertices.test_http_source import ready  # noqa: PLC0415

    port = free_port()
    runner.write([{"name": "in", "source": {"http": {"port": port, "host": "127.0.0.1"}}},
                  {"name": "agg", "udf": {"reduce": {"handler": "tests.udfs:window_sum",
                                                     "window": {"fixed": {"length": "2s"}}}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}], watermark=watermark)
    out = await Collector().start(nc, f"{runner.name}.out")
    await runner.start_all()
    await wait_for(lambda: ready(port), 30, "the HTTP source to listen")
    return f"http://127.0.0.1:{port}/vertices/in", out


async def post_two_windows(url: str) -> tuple[int, set[tuple]]:
    """40 POSTs, keys a and b, event times 100 ms apart over two 2 s windows that start 4 s ago
    (live data); returns the first window's start (ms) and the 4 results they must give."""
    from tests.vertices.test_http_source import apost  # noqa: PLC0415

    now = int(time.time() * 1000)
    base = now - now % 2000 - 4000
    for i in range(40):
        status, _ = await apost(url, json.dumps({"v": i}).encode(),
                                {"X-Natsflow-Keys": "ab"[i % 2], "X-Natsflow-Event-Time": str(base + i * 100)})
        assert status == 200
    expected = {((k,), (base + w * 2000) // 1000, (base + w * 2000 + 2000) // 1000, 10,
                 sum(i for i in range(w * 20, w * 20 + 20) if "ab"[i % 2] == k)) for k in "ab" for w in (0, 1)}
    return base, expected


def window_results(c: Collector) -> set[tuple]:
    return {(tuple(r["keys"]), r["start"], r["end"], r["count"], r["sum"]) for r in (json.loads(m.data) for m in c.msgs)}


async def test_http_windows_close_after_input_stops_without_idle_source(runner, nc):
    """No spec.watermark.idleSource: an HTTP source still moves its watermark on once it has
    been idle for the default threshold (5 s), so the last window closes (it never did)."""
    url, out = await http_reduce(runner, nc)
    _, expected = await post_two_windows(url)
    stopped = time.monotonic()
    await out.wait_count(4, timeout=30)
    closed_after = time.monotonic() - stopped
    assert window_results(out) == expected and len(out.msgs) == 4
    assert closed_after < 15, f"the last window closed {closed_after:.1f}s after the input stopped"
    print(f"last window closed {closed_after:.1f}s after the input stopped")


@pytest.mark.parametrize("idle", [None, {"threshold": "3s", "incrementBy": "3s"}], ids=["default", "idleSource"])
async def test_held_windows_close_after_a_source_restart_without_new_input(runner, nc, idle):
    """The source is restarted (SIGTERM, start) while the reduce holds an open window, and no
    input comes after: the new source process picks its watermark up from what its vertex
    published before and the idle rule moves it on, so the held window closes (the restarted
    source's watermark used to stay unknown, with or without idleSource)."""
    url, out = await http_reduce(runner, nc, watermark={"publisherTimeout": "2s", **({"idleSource": idle} if idle else {})})
    base, expected = await post_two_windows(url)
    assert await runner.terminate("in") == 0  # before its idle threshold: the second window stays open
    await out.wait_count(2)  # the first window, closed by the second one's input
    assert window_results(out) == {r for r in expected if r[1] * 1000 == base}, "the second window closed early"
    async def holds_only_the_open_window() -> bool:
        info = await nc.jetstream().consumer_info(f"nf_{runner.name}_agg", f"nf_{runner.name}_agg")
        return info.num_ack_pending == 20

    # the closed window's inputs are acked just after its result is published, so wait for that
    await wait_for(holds_only_the_open_window, 10, "the reduce to hold only the open window's 20 inputs")
    runner.start("in")
    restarted = time.monotonic()
    await out.wait_count(4, timeout=30)
    closed_after = time.monotonic() - restarted
    assert window_results(out) == expected and len(out.msgs) == 4
    assert closed_after < 15, f"the held window closed {closed_after:.1f}s after the restart"
    assert "watermark resumed" in runner.log("in")
    print(f"held window closed {closed_after:.1f}s after the source restarted")
