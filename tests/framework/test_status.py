"""`natsflow status` while traffic flows: replicas from the server's connections, live rates."""

from __future__ import annotations

from tests.conftest import Collector, wait_for
from tests.framework.test_worker import gen, out, udf


def status(runner, *extra: str) -> dict[str, list[str]]:
    return runner.status(*extra).vertices


async def test_status_counts_replicas_by_connection_and_shows_rates(runner, nc, nats_server):
    # 200 messages per second for 12 s: rates are measured over the command's 1 s window.
    runner.write([gen("in", 2400, rpu=20, duration="100ms"), udf("map", "identity"),
                  out("out", f"{runner.name}.out")],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    sink = await Collector().start(nc, f"{runner.name}.out")
    await runner.start_all()
    runner.start("map", replica="2")  # a second replica of the map
    await sink.wait_count(200, timeout=30)
    monitor = f"http://127.0.0.1:{nats_server.monitor_port}"

    def flowing() -> dict[str, list[str]] | None:
        rows = status(runner, "--monitor-url", monitor)
        return rows if rows["map"][2] == "2" and float(rows["map"][4].replace(",", "")) > 0 else None

    rows = await wait_for(flowing, 30, "two map replicas and traffic in the status table", interval=0.5)
    # One server, not clustered: each buffer has one replica and no leader to name.
    assert runner.status().buffers == {f"nf_{runner.name}_map": ["1", "-", "-"], f"nf_{runner.name}_out": ["1", "-", "-"]}
    assert rows["in"][2] == "1" and rows["out"][2] == "1"  # one connection each
    for name, col in (("in", 4), ("map", 3), ("map", 4), ("out", 4)):
        rate = float(rows[name][col].replace(",", ""))
        assert 50 <= rate <= 600, (name, col, rows[name])  # about 200/s, measured over ~1 s
    assert rows["in"][3] == "-"  # a source has no buffer: nothing comes in
    await sink.wait_count(2400, timeout=60)


async def test_status_shows_what_a_reduce_holds_in_open_windows(runner, nc):
    """40 inputs (4 keys x 10 s) in windows that cannot close yet: the reduce's `held` column
    shows them (from its replicas' heartbeats); other vertices show `-`."""
    from tests.framework.test_reduce import consumed, publish, reduce_pipeline, source_stream

    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}}, partitions=2)
    await runner.start_all()
    await publish(js, f"{runner.name}.src", [(k, t, t) for t in range(10) for k in ("a", "b", "c", "d")])
    await consumed(nc, runner)

    # columns: vertex kind replicas in/s out/s pending ack-pend held buffer pulls dlq watermark
    def held_40() -> dict[str, list[str]] | None:
        rows = status(runner)
        return rows if rows["agg"][7] == "40" else None

    rows = await wait_for(held_40, 30, "the reduce to show 40 held")
    assert rows["agg"][6] == "40"  # ack pending: held in open windows = delivered and not acked
    assert (rows["in"][7], rows["out"][7]) == ("-", "-")
