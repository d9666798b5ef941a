"""Poison pills: a message the worker cannot decode, a result it cannot publish and a handler call
that never returns each go to the dead-letter stream alone, while the rest of the batch flows."""

from __future__ import annotations

import json

from framework.transport.client import publish_many
from framework.transport.settings import NatsSettings
from tests.conftest import Collector, wait_for
from tests.framework.test_worker import gen, out, udf

GOOD = 128


def envelope(n: int, *extra: bytes, event_time: bool = True, data_id: bool = True, msg_id: bool = True) -> bytes:
    """natsflow's envelope in wire form, plus raw header lines (anything valid on the NATS wire)."""
    lines = [b"NATS/1.0"] + [f"Nats-Msg-Id: feed:{n}".encode()] * msg_id + [f"Nf-Id: in-{n}".encode()] * data_id
    if event_time:
        lines.append(f"Nf-Event-Time: {1_700_000_000_000 + n}".encode())
    return b"\r\n".join(lines + list(extra)) + b"\r\n\r\n"


def payload(n: int) -> bytes:
    return json.dumps({"seq": n}).encode()


async def dead_letters(nc, stream: str, n: int) -> list:
    psub = await nc.jetstream().pull_subscribe("", durable=None, stream=stream)
    letters = await psub.fetch(n, timeout=5)
    await psub.unsubscribe()
    return letters


def quiet_source(runner) -> dict:
    return {"name": "in", "source": {"nats": {"subject": f"{runner.name}.unused"}}}


async def test_undecodable_messages_are_dead_lettered_alone(runner, nc):
    """Inputs written straight into a map's buffer with a raw HPUB: 128 good ones among a header
    name outside the token set, an Nf-Keys that is not JSON, an Nf-Event-Time that is not a number
    and a header value that is not UTF-8 (each valid on the NATS wire). The four go to the
    dead-letter stream with their reason; the 128, one carrying a JetStream control header, one
    without Nf-Event-Time, one without Nf-Id and one with neither Nf-Id nor Nats-Msg-Id, arrive
    once each."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([quiet_source(runner), udf("map", "identity"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.provision()
    buffer = f"nf_{runner.name}_map"
    bad = {
        1000: envelope(1000, b"X(bad): 1"),
        1001: envelope(1001, b"Nf-Keys: not-json"),
        1002: envelope(1002, b"Nf-Event-Time: soon"),
        1003: envelope(1003, b"X-Raw: caf\xe9 \xff"),
    }
    items = []
    for n in range(GOOD):
        if n == 5:
            head = envelope(n, f"Nats-Expected-Stream: {buffer}".encode())  # true here, false downstream
        elif n == 6:
            head = envelope(n, event_time=False)
        elif n == 8:
            head = envelope(n, data_id=False)
        elif n == 9:
            head = envelope(n, data_id=False, msg_id=False)
        else:
            head = envelope(n, b"X-User: kept")
        items.append((f"nf.{runner.name}.map.in", "", payload(n), head))
        if n % 40 == 0:
            m = 1000 + n // 40
            items.append((f"nf.{runner.name}.map.in", "", payload(m), bad[m]))
    writer = await NatsSettings(url=runner.url).connect("poison-feed")
    try:
        await publish_many(writer, items)
        await writer.flush()
    finally:
        await writer.close()
    await wait_for(lambda: runner.stream_messages(nc, buffer), 10, "inputs stored")
    assert await runner.stream_messages(nc, buffer) == GOOD + 4
    stored_at = (await nc.jetstream().get_msg(buffer, 8)).time  # seq 8 = input 6 (after 1000 and 1001)
    assert json.loads((await nc.jetstream().get_msg(buffer, 8)).data)["seq"] == 6
    assert json.loads((await nc.jetstream().get_msg(buffer, 11)).data)["seq"] == 9

    runner.start("map")
    runner.start("out")
    await sink.wait_count(GOOD, 30)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(json.loads(m.data)["seq"] for m in sink.msgs) == list(range(GOOD))
    assert len(set(sink.ids)) == GOOD
    by_seq = {json.loads(m.data)["seq"]: m for m in sink.msgs}
    assert not any(k.lower().startswith("nats-expected") for k in by_seq[5].headers)  # control headers stay behind
    assert by_seq[7].headers["X-User"] == "kept"
    # No Nf-Event-Time: the input's JetStream timestamp, the same on every redelivery.
    assert int(by_seq[6].headers["Nf-Event-Time"]) == int(stored_at.timestamp() * 1000)
    # No Nf-Id: its Nats-Msg-Id; neither: its stream sequence (both survive a redelivery).
    assert by_seq[8].headers["Nf-Id"] == "feed:8" and by_seq[9].headers["Nf-Id"] == "seq:11"

    dlq = f"nf_{runner.name}_map_dlq"
    assert await runner.stream_messages(nc, dlq) == 4
    letters = {json.loads(m.data)["seq"]: m.headers for m in await dead_letters(nc, dlq, 4)}
    assert sorted(letters) == [1000, 1001, 1002, 1003]
    assert letters[1000]["Nf-Error"] == (
        "bad envelope: header name 'X(bad)' is not an HTTP token; dead letter: header 'X(bad)' renamed 'X_bad_'")
    assert letters[1000]["X_bad_"] == "1"
    assert letters[1001]["Nf-Error"].startswith("bad envelope: Nf-Keys is not a JSON array of strings: 'not-json'")
    assert letters[1002]["Nf-Error"] == "bad envelope: Nf-Event-Time must be integer epoch milliseconds, got 'soon'"
    assert letters[1003]["Nf-Error"] == (
        "bad envelope: header 'X-Raw' value is not UTF-8; dead letter: value of header 'X-Raw' escaped")
    assert letters[1003]["X-Raw"] == "caf\\xe9 \\xff"
    assert all(h["Nf-Error-Vertex"] == "map" and h["Nf-Id"] == f"in-{n}" for n, h in letters.items())


async def test_unpublishable_results_are_dead_lettered_alone(runner, nc):
    """A flatmap whose result for 4 of every 50 inputs cannot be published: over max_payload once
    the headers are added, a header name outside the token set, a second output far over the
    limit, a header value that is not text. Those inputs go to the dead-letter stream with the
    reason and none of their outputs is written; the other 184 of 200 flow."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", 200), udf("grow", "unpublishable_some", kind="flatmap", retry={"attempts": 1}),
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "grow"}, {"from": "grow", "to": "out"}])
    await runner.start_all()
    bad = {n for n in range(200) if n % 50 in (7, 8, 9, 10)}
    await sink.wait_count(200 - len(bad), 30)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    assert sorted(json.loads(m.data)["seq"] for m in sink.msgs) == sorted(set(range(200)) - bad)
    dlq = f"nf_{runner.name}_grow_dlq"
    assert await runner.stream_messages(nc, dlq) == len(bad)
    letters = {json.loads(m.data)["seq"]: m.headers["Nf-Error"] for m in await dead_letters(nc, dlq, len(bad))}
    assert sorted(letters) == sorted(bad)
    assert letters[7].startswith("UnpublishableOutput: output 0 is 1048") and \
        letters[7].endswith(" bytes with headers, over the server's max_payload 1048576")
    assert letters[8] == "UnpublishableOutput: output 0: header name 'X(bad)' is not an HTTP token"
    assert letters[9].startswith("UnpublishableOutput: output 1 is 1048")
    assert letters[10] == "UnpublishableOutput: output 0: header 'X-Count' value is int, not str"


def _timeout_vertex(kind: str) -> dict:
    handler = {"map": "hang_some", "async": "async_hang_some", "batchMap": "batch_hang_some",
               "mapStream": "stream_hang_some"}[kind]
    return udf("slow", handler, kind="map" if kind == "async" else kind, timeout="1s", retry={"attempts": 1})


async def _hung_call_is_dead_lettered(runner, nc, kind: str, total: int, hang: set[int], **extra) -> set[int]:
    """Runs gen(total) -> slow -> out with the calls for `hang` never returning; every input is
    either delivered once or dead-lettered with the timeout error. Returns the dead-lettered ones."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    vertex = _timeout_vertex(kind)
    vertex["udf"][next(iter(vertex["udf"]))].update(extra)
    runner.write([gen("in", total), vertex, out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}],
                 limits={"readBatchSize": 100})
    await runner.start_all(HANG_SEQS=",".join(map(str, sorted(hang))))
    dlq = f"nf_{runner.name}_slow_dlq"

    async def settled() -> bool:
        return len(sink.msgs) + await runner.stream_messages(nc, dlq) >= total

    await wait_for(settled, 40, f"{total} inputs delivered or dead-lettered")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    letters = await dead_letters(nc, dlq, await runner.stream_messages(nc, dlq))
    dead = [json.loads(m.data)["seq"] for m in letters]
    assert set(dead) >= hang and len(dead) == len(set(dead))
    assert {m.headers["Nf-Error"] for m in letters} == {"HandlerTimeout: handler did not return within 1s"}
    got = [json.loads(m.data)["seq"] for m in sink.msgs]
    assert len(got) == len(set(got)) == total - len(dead)
    assert set(got) | set(dead) == set(range(total))
    assert runner.procs["slow"].poll() is None  # still running
    return set(dead)


async def test_sync_map_call_over_timeout_is_dead_lettered_alone(runner, nc):
    assert await _hung_call_is_dead_lettered(runner, nc, "map", 3000, {13}) == {13}


async def test_async_map_call_over_timeout_is_dead_lettered_alone(runner, nc):
    assert await _hung_call_is_dead_lettered(runner, nc, "async", 3000, {13}) == {13}


async def test_batch_map_chunk_over_timeout_is_dead_lettered(runner, nc):
    """The hung call's chunk (at most maxBatchSize inputs) is dead-lettered, nothing else."""
    dead = await _hung_call_is_dead_lettered(runner, nc, "batchMap", 1000, {13}, maxBatchSize=8)
    assert 13 in dead and len(dead) <= 8


async def test_map_stream_step_over_timeout_is_dead_lettered(runner, nc):
    """mapStream: the output yielded before the hang is kept, the input is dead-lettered."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", 500), _timeout_vertex("mapStream"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}])
    await runner.start_all(HANG_SEQS="13")
    await sink.wait_count(500, 40)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    got = sorted(json.loads(m.data)["seq"] for m in sink.msgs)
    assert got == list(range(500))
    letters = await dead_letters(nc, f"nf_{runner.name}_slow_dlq", 10)
    assert [json.loads(m.data)["seq"] for m in letters] == [13]
    assert letters[0].headers["Nf-Error"] == "HandlerTimeout: handler did not return within 1s"


async def test_too_many_stuck_threads_exit_after_dead_lettering(runner, nc):
    """With at most 2 abandoned threads, the 2nd hung call is dead-lettered and acked, then the
    process exits non-zero with a clear message; restarted, it goes on (no crash loop)."""
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([gen("in", 1000), _timeout_vertex("map"), out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "slow"}, {"from": "slow", "to": "out"}],
                 limits={"readBatchSize": 50})
    await runner.start_all(HANG_SEQS="10,300,600", NATSFLOW_MAX_STUCK_THREADS="2")
    proc = runner.procs["slow"]
    await wait_for(lambda: proc.poll() is not None, 40, "slow to exit after its 2nd stuck thread")
    assert proc.returncode != 0
    assert "2 handler threads are stuck" in runner.log("slow")
    runner.start("slow", HANG_SEQS="10,300,600", NATSFLOW_MAX_STUCK_THREADS="2")
    proc = runner.procs["slow"]
    await wait_for(lambda: proc.poll() is not None or len(sink.msgs) >= 997, 60, "the rest after a restart")
    await sink.wait_count(997, 30)
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    got = [json.loads(m.data)["seq"] for m in sink.msgs]
    assert sorted(got) == sorted(set(range(1000)) - {10, 300, 600})
    letters = await dead_letters(nc, f"nf_{runner.name}_slow_dlq", 10)
    assert sorted(json.loads(m.data)["seq"] for m in letters) == [10, 300, 600]


async def test_sink_write_over_timeout_is_a_failed_write(runner, nc, tmp_path):
    """A udsink whose first write never returns: with `sink.timeout: 1s` the write fails, is
    retried on a fresh thread, and every record is written exactly once."""
    sink_file = tmp_path / "written.txt"
    runner.write([gen("in", 500), {"name": "out", "sink": {"udsink": {"handler": "tests.udfs:sink_hang_first"},
                                                          "timeout": "1s"}}],
                 [{"from": "in", "to": "out"}])
    await runner.start_all(SINK_FILE=str(sink_file))
    await wait_for(lambda: sink_file.exists() and len(sink_file.read_text().split()) >= 500, 30, "500 written")
    await wait_for(lambda: runner.drained(nc), 20, "buffers to drain")
    ids = sink_file.read_text().split()
    assert len(ids) == len(set(ids)) == 500
    assert "HandlerTimeout: handler did not return within 1s" in runner.log("out")


async def test_reduce_window_call_over_timeout_is_dead_lettered(runner, nc):
    """A reduce call that never returns for key b: its window's 10 inputs are dead-lettered, the
    windows of key a are emitted, and the vertex goes on."""
    from tests.framework.test_reduce import consumed, publish, reduce_pipeline, results, source_stream  # noqa: PLC0415

    out_ = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, handler="window_sum_hang_b", udf_extra={"timeout": "1s"})
    await runner.start_all()
    await publish(js, f"{runner.name}.src", [(k, t, t) for t in range(20) for k in ("a", "b")])
    await consumed(nc, runner)
    await publish(js, f"{runner.name}.src", [("a", 30, 0)])  # the watermark passes 20 s
    await out_.wait_count(2, 30)
    assert results(out_) == {(("a",), 0, 10, 10, 45), (("a",), 10, 20, 10, 145)}
    dlq = f"nf_{runner.name}_agg_dlq"
    await wait_for(lambda: runner.stream_messages(nc, dlq), 20, "dead letters")
    await wait_for(lambda: _count_is(runner, nc, dlq, 20), 10, "20 dead letters")
    letters = await dead_letters(nc, dlq, 20)
    assert len(letters) == 20 and {m.headers["Nf-Keys"] for m in letters} == {'["b"]'}
    assert {m.headers["Nf-Error"] for m in letters} == {"HandlerTimeout: handler did not return within 1s"}
    assert runner.procs["agg"].poll() is None


async def _count_is(runner, nc, stream: str, n: int) -> bool:
    return await runner.stream_messages(nc, stream) == n


def test_dead_letter_always_fits_and_says_what_changed():
    from framework.runtime.deadletter import dead_letter_message  # noqa: PLC0415
    from framework.transport.headers import parse_header_lines  # noqa: PLC0415

    headers = {"Nats-Msg-Id": "feed:1", "Nf-Id": "in-1", "Nats-Expected-Stream": "s", "X(bad)": "1",
               "X-Raw": "caf\udce9", "X-Big": "h" * 2000}
    m = dead_letter_message("nfdlq.p.v", "dlq:v:1", b"p" * 5000, headers, "ValueError: boom\nline 2", "v", 4000)
    assert len(m.headers) + len(m.payload) <= 4000
    got = parse_header_lines(m.headers[len(b"NATS/1.0\r\n"):])
    assert got["Nf-Error"] == (
        "ValueError: boom | line 2; dead letter: control header 'Nats-Expected-Stream' dropped, header 'X(bad)' "
        f"renamed 'X_bad_', value of header 'X-Raw' escaped, payload truncated from 5000 to {len(m.payload)} bytes")
    assert got["Nats-Msg-Id"] == "dlq:v:1" and got["Nf-Id"] == "in-1" and got["X-Raw"] == "caf\\xe9"
    assert got["X_bad_"] == "1" and "Nats-Expected-Stream" not in got and m.payload == b"p" * len(m.payload)
    # The headers alone do not fit: only natsflow's envelope stays.
    m = dead_letter_message("nfdlq.p.v", "dlq:v:1", b"p" * 5000, headers, "ValueError: boom", "v", 1000)
    got = parse_header_lines(m.headers[len(b"NATS/1.0\r\n"):])
    assert len(m.headers) + len(m.payload) <= 1000 and "X-Big" not in got and got["Nf-Id"] == "in-1"
    assert "3 user headers dropped, payload truncated from 5000 to" in got["Nf-Error"]


async def test_threads_each_bounds_every_call_and_moves_on():
    """One thread hop per batch, each call bounded: the stuck call times out, the calls after it
    run on a fresh thread, the stuck thread is counted until it ends."""
    import threading  # noqa: PLC0415

    from framework.runtime.bounded import HandlerTimeout, Threads, stuck_threads  # noqa: PLC0415

    release = threading.Event()
    before = stuck_threads()

    def fn(n: int) -> int:
        if n == 2:
            release.wait()
        if n == 4:
            raise ValueError("four")
        return n * 10

    got = await Threads().each(fn, list(range(6)), 0.2)
    assert [type(g).__name__ if isinstance(g, Exception) else g for g in got] == \
        [0, 10, "HandlerTimeout", 30, "ValueError", 50]
    assert isinstance(got[2], HandlerTimeout) and str(got[2]) == "handler did not return within 0.2s"
    assert stuck_threads() == before + 1
    release.set()
    await wait_for(lambda: stuck_threads() == before, 5, "the stuck thread to end once released")
