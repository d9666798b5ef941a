"""`natsflow replay` (issue 13, part 5): a source's retained input re-fed into the running
pipeline with new ids, each vertex its own process. The sink sees every original output exactly
once more, and the same replay run again adds nothing (its progress record, and below that the
buffers' dedup of its ids); a reduce takes the replayed event times as late data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import nats
import pytest

from framework.console.replay import parse_when
from framework.isb.retained import ReplayError
from framework.spec import SpecError, parse_pipeline
from tests.conftest import REPO, Collector, wait_for
from tests.framework.test_reduce import consumed, publish, reduce_pipeline, source_stream
from tests.framework.test_worker import gen, udf

TIMEOUT = 120


def _replay(runner, *args: str, url: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "framework.cli", "replay", str(runner.file), "--nats-url",
                           url or runner.url, *args], cwd=REPO, env=runner.env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _sink(runner) -> tuple[dict, str, str]:
    stream, subject = f"OUT_{runner.name}", f"{runner.name}.done"
    return {"name": "out", "sink": {"jetstream": {"stream": stream, "subject": subject}}}, stream, subject


async def _sink_contents(js, stream: str, subject: str) -> tuple[list[str], list[bytes], list[tuple[bytes, str, str]]]:
    """Every message of the sink's stream: data ids, payloads and (payload, event time, keys)."""
    psub = await js.pull_subscribe(subject, durable=None, stream=stream)
    ids, payloads, envelopes = [], [], []
    try:
        while True:
            try:
                msgs = await psub.fetch(1000, timeout=2)
            except (TimeoutError, nats.errors.TimeoutError):
                return ids, payloads, envelopes
            for m in msgs:
                ids.append(m.headers["Nf-Id"])
                payloads.append(m.data)
                envelopes.append((m.data, m.headers["Nf-Event-Time"], m.headers.get("Nf-Keys", "")))
                await m.ack()
    finally:
        await psub.unsubscribe()


async def _outputs(js, stream: str, subject: str, n: int) -> tuple[list[str], list[bytes], list[tuple]]:
    """Wait until the sink's stream holds `n` messages, then read them all."""
    await wait_for(lambda: _count(js, stream, n), TIMEOUT, f"{n} outputs in {stream}")
    return await _sink_contents(js, stream, subject)


async def _count(js, stream: str, n: int) -> bool:
    try:
        return (await js.stream_info(stream)).state.messages >= n
    except Exception:  # the sink creates its stream on its first write
        return False


async def _settled(runner, nc, js, stream: str) -> int:
    """The sink's count once every buffer of the pipeline is empty (nothing more on its way)."""
    await wait_for(lambda: runner.drained(nc), TIMEOUT, "the pipeline's buffers to empty")
    return (await js.stream_info(stream)).state.messages


async def test_replay_of_an_archived_source_writes_each_output_once_more_and_a_second_run_nothing(runner, nc):
    total = 300
    before = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    sink, stream, subject = _sink(runner)
    source = gen("in", total, rpu=100, duration="50ms", keyCount=3)
    source["source"]["archive"] = {"maxAge": "1h"}
    runner.write([source, udf("map", "identity"), sink], [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.start_all()
    js = nc.jetstream()
    _, originals, first_envelopes = await _outputs(js, stream, subject, total)
    assert len(originals) == total and len(set(originals)) == total
    archive = await js.stream_info(f"nf_{runner.name}_in_archive")
    assert archive.state.messages == total and archive.config.max_age == 3600
    kept = await js.get_msg(f"nf_{runner.name}_in_archive", 1)  # the envelope the source wrote
    assert kept.headers["Nats-Msg-Id"].startswith("in:") and kept.headers["Nf-Keys"].startswith('["key-')

    res = _replay(runner, "--vertex", "in", "--from-time", before, "--replay-id", "r1")
    assert res.returncode == 0, res.stderr
    assert f"replay of in: wrote {total} message(s), skipped 0, sequences 1..{total}" in res.stdout
    ids, payloads, envelopes = await _outputs(js, stream, subject, 2 * total)
    assert Counter(payloads) == Counter(originals * 2)
    replayed = [i for i in ids if i.startswith("replay:r1:")]
    assert len(replayed) == total and len(set(replayed)) == total
    # same payload, event time and keys as the originals
    assert Counter(e for i, e in zip(ids, envelopes) if i.startswith("replay:r1:")) == Counter(first_envelopes)
    assert await _settled(runner, nc, js, stream) == 2 * total

    again = _replay(runner, "--vertex", "in", "--from-time", before, "--replay-id", "r1")
    assert again.returncode == 0, again.stderr
    assert "replay r1 of in already done (300 written): nothing more to write" in again.stdout
    # Without its progress record (as if the crash came before the record was written), the same
    # ids are stored again and the buffers drop them as duplicates.
    kv = await js.key_value(f"nf_{runner.name}_replays")
    await kv.delete("r1")
    third = _replay(runner, "--vertex", "in", "--from-seq", "1", "--replay-id", "r1")
    assert third.returncode == 0, third.stderr
    assert f"wrote {total} message(s)" in third.stdout
    assert await _settled(runner, nc, js, stream) == 2 * total
    assert Counter((await _sink_contents(js, stream, subject))[1]) == Counter(originals * 2)


async def test_replay_of_a_jetstream_source_by_sequence_range(runner, nc):
    n = 40
    js = nc.jetstream()
    upstream = f"SRC_{runner.name}"
    await js.add_stream(name=upstream, subjects=[f"{runner.name}.src"])
    for i in range(n):
        await js.publish(f"{runner.name}.src", f"m{i}".encode(), headers={"Nf-Keys": f'["k{i % 2}"]'})
    # Sequence n + 1 fits the server's max_payload only without the envelope: a dead letter.
    await js.publish(f"{runner.name}.src", b"x" * (nc.max_payload - 16))
    dlq = f"nf_{runner.name}_in_dlq"
    sink, stream, subject = _sink(runner)
    runner.write([{"name": "in", "source": {"jetstream": {"stream": upstream}}}, udf("map", "identity"), sink],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.start_all()
    _, originals, _ = await _outputs(js, stream, subject, n)
    assert sorted(originals) == sorted(f"m{i}".encode() for i in range(n))
    await wait_for(lambda: _count(js, dlq, 1), TIMEOUT, "the source's dead letter")

    dry = _replay(runner, "--vertex", "in", "--from-seq", "5", "--to-seq", "24", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "replay of in: would write 20 message(s), skipped 0, sequences 5..24" in dry.stdout
    assert await _settled(runner, nc, js, stream) == n

    res = _replay(runner, "--vertex", "in", "--from-seq", "5", "--to-seq", "24")
    assert res.returncode == 0, res.stderr
    assert "wrote 20 message(s), skipped 0, sequences 5..24" in res.stdout
    _, payloads, _ = await _outputs(js, stream, subject, n + 20)
    assert Counter(payloads) - Counter(originals) == Counter(f"m{i}".encode() for i in range(4, 24))
    # The same command again: the same (derived) replay id, already done.
    again = _replay(runner, "--vertex", "in", "--from-seq", "5", "--to-seq", "24")
    assert again.returncode == 0 and "already done (20 written)" in again.stdout, again.stdout + again.stderr
    assert await _settled(runner, nc, js, stream) == n + 20

    # A replay that crashed after storing sequences 1..30 resumes at 31 when run with its id.
    kv = await js.key_value(f"nf_{runner.name}_replays")
    await kv.put("crashed", json.dumps({"vertex": "in", "first": 1, "end": n + 1, "next": 31, "written": 30,
                                        "skipped": 0, "done": False}).encode())
    resumed = _replay(runner, "--vertex", "in", "--from-seq", "1", "--replay-id", "crashed")
    assert resumed.returncode == 0, resumed.stderr
    assert "replay crashed: resuming at seq 31 (30 written before)" in resumed.stdout
    assert (f"skipped message {n + 1} is 1048" in resumed.stdout and f"bytes with headers, over the server's "
            f"max_payload {nc.max_payload} (to the dead-letter stream)" in resumed.stdout), resumed.stdout
    assert f"wrote 40 message(s), skipped 1, sequences 1..{n + 1}" in resumed.stdout  # 30 before, 10 now
    assert (await js.stream_info(dlq)).state.messages == 2
    _, payloads, _ = await _outputs(js, stream, subject, n + 30)
    assert Counter(payloads) - Counter(originals) == Counter(f"m{i}".encode() for i in [*range(4, 24), *range(30, n)])
    assert await _settled(runner, nc, js, stream) == n + 30


async def test_replay_refuses_what_it_cannot_replay(runner, nc):
    sink, _, _ = _sink(runner)
    archived = gen("arch", 1, rpu=1)
    archived["source"]["archive"] = {"maxAge": "10m"}
    runner.write([gen("in", 1), archived, udf("map", "identity"), sink],
                 [{"from": "in", "to": "map"}, {"from": "arch", "to": "map"}, {"from": "map", "to": "out"}])
    await runner.provision()
    cases = {
        ("--vertex", "map", "--from-seq", "1"): "vertex 'map' is a udf, not a source",
        ("--vertex", "in", "--from-seq", "1"): "source 'in' (generator) keeps no input to replay: add `archive: "
                                               "{maxAge: 1d}`",
        ("--vertex", "arch", "--from-seq", "1"): f"nothing to replay: stream 'nf_{runner.name}_arch_archive' holds "
                                                 "no messages",
        ("--vertex", "arch", "--from-time", "yesterday"): "'yesterday' is neither an RFC 3339 time",
        ("--vertex", "nope", "--from-seq", "1"): "has no vertex 'nope'",
    }
    for args, error in cases.items():
        res = _replay(runner, *args)
        assert res.returncode == 1 and error in res.stderr, (args, res.stderr)
    started = time.monotonic()
    res = _replay(runner, "--vertex", "arch", "--from-seq", "1", "--connect-timeout", "1", url="nats://127.0.0.1:1")
    assert res.returncode == 3 and "natsflow:" in res.stderr and time.monotonic() - started < 30, res.stderr


def test_times_are_rfc3339_or_a_duration_before_now() -> None:
    now = 1_800_000_000_000
    assert parse_when("15m", now) == now - 900_000
    assert parse_when("2026-11-30T20:00:00Z") == int(datetime(2026, 11, 30, 20, tzinfo=UTC).timestamp() * 1000)
    assert parse_when("2026-11-30T21:00:00+01:00") == parse_when("2026-11-30T20:00:00Z")
    with pytest.raises(ReplayError, match="has no UTC offset"):
        parse_when("2026-11-30T20:00:00")


@pytest.mark.parametrize("archive, error", [
    ({}, "spec.vertices[0].source.archive.maxAge: Field required"),
    ({"maxAge": "1h", "maxBytes": "10"}, "spec.vertices[0].source.archive.maxBytes: must be at least 1MiB"),
    ({"maxAge": "0s"}, "spec.vertices[0].source.archive.maxAge: Input should be greater than 0"),
])
def test_archive_spec_errors_name_the_field(archive: dict, error: str) -> None:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
           "spec": {"vertices": [{**gen("in", 1), "source": {"generator": {"total": 1}, "archive": archive}},
                                 {"name": "out", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    with pytest.raises(SpecError) as exc:
        parse_pipeline(doc, file="p.yaml")
    assert f"p.yaml: {error}" in str(exc.value)


async def test_replayed_event_times_are_late_data_for_a_reduce(runner, nc):
    """A replay publishes no watermark: a reduce whose watermark passed the replayed events'
    windows sends every one of them to its late edge and emits nothing more."""
    out = await Collector().start(nc, f"{runner.name}.out")
    late = await Collector().start(nc, f"{runner.name}.late")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, late_edge=True)
    await runner.start_all()
    subject = f"{runner.name}.src"
    await publish(js, subject, [("a", t, t) for t in range(10)])
    await consumed(nc, runner)
    await publish(js, subject, [("a", 40, 100)])  # the watermark reaches 40 s: [0, 10) closes
    await out.wait_count(1)
    res = _replay(runner, "--vertex", "in", "--from-seq", "1", "--to-seq", "10")
    assert res.returncode == 0 and "wrote 10 message(s)" in res.stdout, res.stdout + res.stderr
    await late.wait_count(10)
    await wait_for(lambda: runner.drained(nc, holding=("agg",)), TIMEOUT, "buffers to drain")
    assert sorted(json.loads(m.data)["v"] for m in late.msgs) == list(range(10))
    assert len(out.msgs) == 1 and json.loads(out.msgs[0].data)["count"] == 10


def test_a_jetstream_source_may_read_another_pipelines_archive() -> None:
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
           "spec": {"vertices": [{"name": "in", "source": {"jetstream": {"stream": "nf_other_in_archive"}}},
                                 {"name": "out", "sink": {"log": {}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    assert parse_pipeline(doc).vertex("in").source.jetstream.stream == "nf_other_in_archive"
    doc["spec"]["vertices"][0]["source"]["jetstream"]["stream"] = "nf_p_in_archive"
    with pytest.raises(SpecError, match="is one of this pipeline's own buffers or dead-letter streams"):
        parse_pipeline(doc)
