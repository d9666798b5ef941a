"""End to end, every vertex its own process, against the session's private nats-server."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

from tests.conftest import Collector, wait_for


def gen(name: str, total: int, rpu: int = 100_000, duration: str = "100ms", **extra) -> dict:
    return {"name": name, "source": {"generator": {"total": total, "rpu": rpu, "duration": duration, **extra}}}


def udf(name: str, handler: str, kind: str = "map", **extra) -> dict:
    return {"name": name, "udf": {kind: {"handler": f"tests.udfs:{handler}"}, **extra}}


def out(name: str, subject: str) -> dict:
    return {"name": name, "sink": {"nats": {"subject": subject}}}


def seqs(c: Collector) -> list[int]:
    return [json.loads(m.data)["seq"] for m in c.msgs]


async def test_generator_map_sink_exact(runner, nc):
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", 3000, keyCount=3), udf("map", "identity"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.start_all()
    await sink.wait_count(3000)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(sink)) == list(range(3000))
    assert len(set(sink.ids)) == 3000
    first = sink.msgs[0]
    assert json.loads(first.headers["Nf-Keys"])[0].startswith("key-")
    assert int(first.headers["Nf-Event-Time"]) > 1_700_000_000_000


async def test_async_handler_fan_out_and_join(runner, nc):
    a = await Collector().start(nc, f"{runner.name}.a")
    b = await Collector().start(nc, f"{runner.name}.b")
    runner.write(
        [gen("in1", 500), gen("in2", 700), udf("join", "async_identity"),
         out("outa", f"{runner.name}.a"), out("outb", f"{runner.name}.b")],
        [{"from": "in1", "to": "join"}, {"from": "in2", "to": "join"},
         {"from": "join", "to": "outa"}, {"from": "join", "to": "outb"}],
    )
    await runner.start_all()
    await a.wait_count(1200)
    await b.wait_count(1200)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    expected = sorted(list(range(500)) + list(range(700)))
    assert sorted(seqs(a)) == expected and sorted(seqs(b)) == expected
    assert len(set(a.ids)) == 1200


async def test_tag_conditions_or_and_not(runner, nc):
    subj = runner.name
    c = {k: await Collector().start(nc, f"{subj}.{k}") for k in ("even", "oddthree", "noteven")}
    runner.write(
        [gen("in", 600), udf("tag", "tag_parity"),
         out("even", f"{subj}.even"), out("oddthree", f"{subj}.oddthree"), out("noteven", f"{subj}.noteven")],
        [{"from": "in", "to": "tag"},
         {"from": "tag", "to": "even", "conditions": {"tags": {"operator": "or", "values": ["even"]}}},
         {"from": "tag", "to": "oddthree",
          "conditions": {"tags": {"operator": "and", "values": ["odd", "three"]}}},
         {"from": "tag", "to": "noteven", "conditions": {"tags": {"operator": "not", "values": ["even"]}}}],
    )
    await runner.start_all()
    await c["even"].wait_count(300)
    await c["noteven"].wait_count(300)
    await c["oddthree"].wait_count(100)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(c["even"])) == list(range(0, 600, 2))
    assert sorted(seqs(c["noteven"])) == list(range(1, 600, 2))
    assert sorted(seqs(c["oddthree"])) == [n for n in range(600) if n % 2 and n % 3 == 0]


async def test_drop_and_flatmap(runner, nc):
    kept = await Collector().start(nc, f"{runner.name}.kept")
    flat = await Collector().start(nc, f"{runner.name}.flat")
    runner.write(
        [gen("in", 300), udf("dropper", "drop_odd"), udf("flat", "split_words", kind="flatmap"),
         out("kept", f"{runner.name}.kept"), out("fout", f"{runner.name}.flat")],
        [{"from": "in", "to": "dropper"}, {"from": "in", "to": "flat"},
         {"from": "dropper", "to": "kept"}, {"from": "flat", "to": "fout"}],
    )
    await runner.start_all()
    expected_flat = sorted(f"{n}:{i}" for n in range(300) for i in range(n % 3))
    await kept.wait_count(150)
    await flat.wait_count(len(expected_flat))
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(seqs(kept)) == list(range(0, 300, 2))
    assert sorted(m.data.decode() for m in flat.msgs) == expected_flat
    assert await runner.terminate("dropper") == 0
    stats = json.loads(runner.log("dropper").rsplit("stats ", 1)[1].splitlines()[0])
    assert stats["forwarder_drop_total[drop_tag]"] == 150 and stats["forwarder_write_total[kept]"] == 150
    assert len(set(flat.ids)) == len(expected_flat)  # output i>0 gets id '<input id>:<vertex>:<seq>:<i>'


async def test_udf_errors_go_to_dead_letter_stream(runner, nc):
    ok = await Collector().start(nc, f"{runner.name}.ok")
    runner.write([gen("in", 700), udf("score", "fail_multiples_of_7", retry={"attempts": 2, "interval": "10ms"}),
                  out("ok", f"{runner.name}.ok")],
                 [{"from": "in", "to": "score"}, {"from": "score", "to": "ok"}])
    await runner.start_all()
    await ok.wait_count(600)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    js = nc.jetstream()
    dlq = f"nf_{runner.name}_score_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 10, "dead letters")
    assert await runner.stream_messages(nc, dlq) == 100
    assert sorted(seqs(ok)) == [n for n in range(700) if n % 7]
    psub = await js.pull_subscribe("", durable=None, stream=dlq)
    letters = await psub.fetch(100, timeout=5)
    failed = sorted(json.loads(m.data)["seq"] for m in letters)
    assert failed == list(range(0, 700, 7))
    err = letters[0].headers["Nf-Error"]
    assert err.startswith("ValueError: cannot score item ") and letters[0].headers["Nf-Error-Vertex"] == "score"


async def test_handler_returning_wrong_type_is_dead_lettered(runner, nc):
    runner.write([gen("in", 10), udf("bad", "bad_return", retry={"attempts": 1}), out("o", f"{runner.name}.o")],
                 [{"from": "in", "to": "bad"}, {"from": "bad", "to": "o"}])
    await runner.start_all()
    dlq = f"nf_{runner.name}_bad_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 20, "dead letters")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert await runner.stream_messages(nc, dlq) == 10
    msg = await nc.jetstream().get_last_msg(dlq, f"nfdlq.{runner.name}.bad")
    assert msg.headers["Nf-Error"] == (
        "HandlerResultError: handler returned dict; expected Message, list[Message] or None")


async def test_sigkill_map_mid_stream_loses_and_duplicates_nothing(runner, nc):
    total = 20_000
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", total, rpu=2000, duration="250ms"), udf("map", "identity"),
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}],
                 limits={"ackWait": "2s"})
    await runner.start_all()
    await sink.wait_count(3000)
    runner.kill("map")
    assert len(sink.msgs) < total, "the kill came too late to test anything"
    runner.start("map")
    await sink.wait_count(total, timeout=90)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    counts = Counter(seqs(sink))
    assert len(counts) == total and set(counts) == set(range(total))
    assert [s for s, n in counts.items() if n > 1] == []
    assert len(sink.msgs) == total


async def test_sigterm_mid_stream_drains_and_exits_zero(runner, nc):
    total = 10_000
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", total, rpu=1000, duration="100ms"), udf("map", "identity"),
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], limits={"ackWait": "120s"})
    await runner.start_all()
    await sink.wait_count(2000)
    assert await runner.terminate("map", timeout=30) == 0
    assert "stopped; stats" in runner.log("map")
    runner.start("map")
    # well within the 120 s ack wait: what the stopped map read ahead was handed back, none of it
    # redelivered into its own expiring pull requests and lost there until the ack wait ended
    await sink.wait_count(total, timeout=45)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(seqs(sink)) == list(range(total))  # nothing lost, nothing twice


async def test_sigterm_at_a_full_buffer_hands_the_batch_back_within_the_grace_period(runner, nc):
    """docs/protocol.md §8: the map's batch waits at its sink's full buffer (the sink is not
    running); SIGTERM with a 4 s grace: it waits 3 s, naks the batch, exits 0 before it would be
    killed, and the restarted pipeline delivers every message exactly once."""
    total = 300
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", total), udf("map", "identity"),
                  {**out("out", f"{runner.name}.out"), "limits": {"bufferMaxLength": 20}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], limits={"ackWait": "60s"})
    await runner.provision()
    runner.start("in")
    runner.start("map", NATSFLOW_GRACE_SECONDS="4")
    out_buffer, map_consumer = f"nf_{runner.name}_out", (f"nf_{runner.name}_map", f"nf_{runner.name}_map")

    async def blocked() -> bool:
        info = await nc.jetstream().consumer_info(*map_consumer)
        return await runner.stream_messages(nc, out_buffer) == 16 and info.num_ack_pending > 0

    await wait_for(blocked, 30, "the map to wait at the sink's full buffer (16 = 80% of 20)")
    stopped = time.monotonic()
    assert await runner.terminate("map", timeout=15) == 0
    took = time.monotonic() - stopped
    assert 2.5 < took < 6, f"exited {took:.1f}s after SIGTERM (grace 4 s: hand back at 3 s)"
    assert "handed back for redelivery" in runner.log("map")
    info = await nc.jetstream().consumer_info(*map_consumer)
    assert info.ack_floor.stream_seq <= 16  # acked: only inputs whose outputs are stored (earlier batches)
    runner.start("map")
    runner.start("out")
    await sink.wait_count(total, timeout=20)  # well within the 60 s ack wait: the batch was naked, not held
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
    assert sorted(seqs(sink)) == list(range(total))  # nothing lost, nothing twice


async def test_back_pressure_bounds_buffer_and_loses_nothing(runner, nc, tmp_path):
    total = 2000
    sink_file = tmp_path / "sink.txt"
    runner.write(
        [gen("in", total), udf("map", "identity"),
         {"name": "slow", "sink": {"udsink": {"handler": "tests.udfs:slow_file_sink"}},
          "limits": {"bufferMaxLength": 200, "readBatchSize": 50}}],
        [{"from": "in", "to": "map"}, {"from": "map", "to": "slow"}],
    )
    await runner.start_all(SINK_FILE=str(sink_file), SLOW_SINK_SECONDS="0.02")
    peak = 0
    map_buffer_peak = 0

    async def done() -> bool:
        nonlocal peak, map_buffer_peak
        peak = max(peak, await runner.stream_messages(nc, f"nf_{runner.name}_slow"))
        map_buffer_peak = max(map_buffer_peak, await runner.stream_messages(nc, f"nf_{runner.name}_map"))
        return sink_file.exists() and len(sink_file.read_text().splitlines()) >= total

    await wait_for(done, 90, "the slow sink to receive everything", interval=0.02)
    ids = sink_file.read_text().splitlines()
    assert len(ids) == total and len(set(ids)) == total
    assert 0 < peak <= 160  # 80% of bufferMaxLength 200
    assert map_buffer_peak > 200  # the backlog stayed upstream, in the map's buffer


async def test_discard_latest_counts_drops(runner, nc, tmp_path):
    total = 3000
    sink_file = tmp_path / "sink.txt"
    runner.write(
        [gen("in", total), udf("map", "identity"),
         {"name": "slow", "sink": {"udsink": {"handler": "tests.udfs:slow_file_sink"}},
          "limits": {"bufferMaxLength": 100, "readBatchSize": 20}}],
        [{"from": "in", "to": "map"}, {"from": "map", "to": "slow", "onFull": "discardLatest"}],
    )
    await runner.start_all(SINK_FILE=str(sink_file), SLOW_SINK_SECONDS="0.05")

    async def all_generated() -> bool:
        info = await nc.jetstream().stream_info(f"nf_{runner.name}_map")
        return info.state.last_seq == total

    await wait_for(all_generated, 60, "the generator to write everything")
    await wait_for(lambda: runner.drained(nc), 90, "buffers to drain")
    assert await runner.terminate("map") == 0
    stats = json.loads(runner.log("map").rsplit("stats ", 1)[1].splitlines()[0])
    written = int(stats["forwarder_write_total[slow]"])
    dropped = int(stats["forwarder_drop_total[buffer_full]"])
    assert dropped > 0 and written + dropped == total
    await wait_for(lambda: sink_file.exists() and len(sink_file.read_text().splitlines()) >= written, 30,
                   "the sink to write what was kept")
    assert len(sink_file.read_text().splitlines()) == written


async def test_command_vertex_speaks_the_protocol(runner, nc):
    """A map written with plain nats-py from docs/protocol.md, between natsflow vertices."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", 1000), {"name": "upper", "udf": {"command": [sys.executable, "tests/raw_vertex.py"]}},
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "upper"}, {"from": "upper", "to": "out"}])
    await runner.start_all()
    await sink.wait_count(1000)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(json.loads(m.data.lower())["seq"] for m in sink.msgs) == list(range(1000))
    assert all(m.data.startswith(b'{"ID":') for m in sink.msgs)


async def test_health_and_metrics_endpoints(runner, nc):
    import urllib.request

    from framework.local.embedded import free_port

    port = free_port()
    runner.write([gen("in", 10), udf("map", "identity"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.provision()
    runner.start("map", NATSFLOW_METRICS_PORT=str(port))

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except OSError as exc:
            return getattr(exc, "code", 0), ""

    await wait_for(lambda: get("/readyz")[0] == 200, 30, "/readyz to answer 200")
    assert get("/livez") == (200, "ok\n")
    status, text = get("/metrics")
    assert status == 200 and 'forwarder_read_total{pipeline="%s",vertex="map"}' % runner.name in text


async def test_status_table(runner, nc):
    runner.write([gen("in", 700), udf("score", "fail_multiples_of_7", retry={"attempts": 1}),
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "score"}, {"from": "score", "to": "out"}])
    await runner.start_all()
    dlq = f"nf_{runner.name}_score_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 20, "dead letters")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")

    def status() -> dict[str, list[str]]:
        return runner.status().vertices

    # watermarks travel by heartbeat (1 s): wait until the map's is published
    rows = await wait_for(lambda: (r := status()) and r["score"][11] != "-" and r, 20, "a watermark for score")
    assert rows["score"][1:3] == ["udf", "1"]  # kind, replicas (watermark heartbeats: no monitoring URL)
    assert rows["score"][3:5] == ["0.0", "0.0"]  # rates in/out once drained
    assert rows["score"][5:8] == ["0", "0", "-"]  # pending, ack pending, held (reduces only)
    assert rows["score"][10] == "100"  # dead letters: multiples of 7 below 700
    assert rows["score"][11].startswith("20")  # a watermark (its source's event time), UTC date
    assert rows["out"][2] == "-"  # a sink publishes no heartbeat: replicas unknown without /connz
