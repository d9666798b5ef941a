"""Windowed reduce in event time, with explicit timestamps (T0 = 2024-01-01T00:00:00Z)."""

from __future__ import annotations

import json

from tests.conftest import Collector, wait_for

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
                    watermark: dict | None = None):
    vertices = [
        {"name": "in", "source": {"jetstream": {"stream": f"SRC_{runner.name}"}}},
        {"name": "agg", "udf": {"reduce": {"handler": "tests.udfs:window_sum", "window": window,
                                           "allowedLateness": lateness, "partitions": partitions}}},
        {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}},
    ]
    edges = [{"from": "in", "to": "agg"}, {"from": "agg", "to": "out"}]
    if late_edge:
        vertices.append({"name": "tardy", "sink": {"nats": {"subject": f"{runner.name}.late"}}})
        edges.append({"from": "agg", "to": "tardy", "late": True})
    runner.write(vertices, edges)
    if watermark:
        import yaml
        doc = yaml.safe_load(runner.file.read_text())
        doc["spec"]["watermark"] = watermark
        runner.file.write_text(yaml.safe_dump(doc))
        runner.write(doc["spec"]["vertices"], doc["spec"]["edges"])
        runner.file.write_text(yaml.safe_dump(doc))
        from framework.spec import load_pipeline
        runner.pipeline = load_pipeline(runner.file)


async def consumed(nc, runner) -> None:
    """The source has read and stored everything published so far (each phase is its own batch,
    so the source's watermark, the minimum event time of a batch, steps as the test intends)."""
    js = nc.jetstream()

    async def done() -> bool:
        try:
            info = await js.consumer_info(f"SRC_{runner.name}", f"nf_{runner.name}_in_src")
        except Exception:
            return False
        last = (await js.stream_info(f"SRC_{runner.name}")).state.last_seq
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq == last

    await wait_for(done, 30, "the source to consume the phase")


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
