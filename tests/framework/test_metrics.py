"""/metrics, /livez and /readyz of running workers (each vertex its own process): exact totals
after N messages, histograms, buffer and watermark gauges, readiness reasons."""

from __future__ import annotations

import math
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from framework.local.embedded import free_port
from tests.conftest import Collector, wait_for


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[str, float]:
    """`name{label=value,...}` (without pipeline and vertex) -> value; {} while not listening yet."""
    status, text = get(port, "/metrics")
    if status == 0:
        return {}
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            extra = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k not in ("pipeline", "vertex", "le"))
            if "le" in s.labels:
                continue  # buckets: _count and _sum are enough here
            out[f"{s.name}{{{extra}}}" if extra else s.name] = s.value
    return out


async def test_totals_histograms_and_gauges_after_n_messages(runner, nc):
    n = 700  # seq 0..699: 100 multiples of 7 fail and are dead-lettered
    sink = await Collector().start(nc, f"{runner.name}.out")
    runner.write([{"name": "in", "source": {"generator": {"total": n, "rpu": 100_000, "duration": "100ms"}}},
                  {"name": "score", "udf": {"map": {"handler": "tests.udfs:fail_multiples_of_7"},
                                            "retry": {"attempts": 1}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "score"}, {"from": "score", "to": "out"}])
    await runner.provision()
    ports = {v: free_port() for v in ("in", "score", "out")}
    for v in ("out", "score", "in"):
        runner.start(v, NATSFLOW_METRICS_PORT=str(ports[v]), NATSFLOW_METRICS_INTERVAL="0.3")
    await sink.wait_count(600, 60)
    await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")

    src = await wait_for(lambda: (m := scrape(ports["in"])) and m["forwarder_read_total"] == n and m, 10, "source totals")
    assert src["forwarder_write_total{to_vertex=score}"] == n
    assert src["forwarder_read_batch_size_sum"] == n
    assert src["forwarder_watermark_ms"] > (time.time() - 300) * 1000
    assert 0 <= src["forwarder_watermark_lag_seconds"] < 300

    score = scrape(ports["score"])
    assert score["forwarder_read_total"] == n and score["forwarder_ack_total"] == n
    assert score["forwarder_dead_letter_total"] == 100 and score["forwarder_udf_error_total"] == 100
    assert score["forwarder_write_total{to_vertex=out}"] == 600
    assert score["forwarder_read_batch_size_sum"] == n
    batches = score["forwarder_read_batch_size_count"]
    assert 2 <= batches <= n  # readBatchSize 500: at least two batches for 700
    assert score["forwarder_udf_processing_seconds_count"] == batches
    assert score["forwarder_udf_batch_seconds_count"] == batches
    assert score["forwarder_udf_processing_seconds_sum"] <= score["forwarder_udf_batch_seconds_sum"]
    assert not any(k.startswith("forwarder_drop_total{") for k in score)  # nothing dropped
    assert not any(k.startswith("forwarder_platform_error_total{") for k in score)

    out = scrape(ports["out"])
    assert out["forwarder_read_total"] == 600 and out["forwarder_ack_total"] == 600
    assert out["forwarder_write_total{to_vertex=sink}"] == 600
    assert out["forwarder_sink_write_seconds_count"] == out["forwarder_read_batch_size_count"]
    assert out["forwarder_dead_letter_total"] == 0

    # Gauges refreshed in the background: the drained buffers read 0 pending, 0 ack pending, and the
    # watermark reaches the map and the sink (heartbeats carry it at least every second).
    for v in ("score", "out"):
        buf = f"buffer=nf_{runner.name}_{v}"
        m = await wait_for(lambda: (m := scrape(ports[v])) and m.get(f"forwarder_buffer_pending{{{buf}}}") == 0
                           and m.get(f"forwarder_buffer_ack_pending{{{buf}}}") == 0
                           and m["forwarder_watermark_ms"] > 0 and m, 15, f"{v} gauges")
        assert m["forwarder_watermark_ms"] <= src["forwarder_watermark_ms"] + 1  # never ahead of its source
        assert 0 <= m["forwarder_watermark_lag_seconds"] < 300
    assert "forwarder_buffer_pending" not in " ".join(src)  # a source has no buffer of its own


async def test_buffer_gauges_follow_the_backlog(runner, nc):
    runner.write([{"name": "in", "source": {"generator": {"total": 300, "rpu": 100_000, "duration": "100ms"}}},
                  {"name": "map", "udf": {"map": {"handler": "tests.udfs:slow_identity"}}},
                  {"name": "out", "sink": {"blackhole": {}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}], limits={"readBatchSize": 10})
    await runner.provision()
    port = free_port()
    runner.start("map", NATSFLOW_METRICS_PORT=str(port), NATSFLOW_METRICS_INTERVAL="0.2", SLOW_MAP_SECONDS="0.05")
    runner.start("in")
    pending, ack = f"forwarder_buffer_pending{{buffer=nf_{runner.name}_map}}", \
        f"forwarder_buffer_ack_pending{{buffer=nf_{runner.name}_map}}"
    m = await wait_for(lambda: (m := scrape(port)) and m.get(pending, 0) >= 150 and m.get(ack, 0) > 0 and m,
                       20, "a backlog of 150 and messages in hand")
    # The map holds the batch it processes plus at most two more (pulled ahead); the rest waits
    # in JetStream.
    assert m[ack] <= 30 and m[pending] + m[ack] <= 300
    info = await nc.jetstream().consumer_info(f"nf_{runner.name}_map", f"nf_{runner.name}_map")
    assert info.num_pending <= m[pending]  # the gauge is a recent reading of a shrinking backlog
    assert m["forwarder_watermark_lag_seconds"] >= 0 or math.isnan(m["forwarder_watermark_lag_seconds"])


async def test_readyz_names_what_is_missing(runner, nc):
    runner.write([{"name": "in", "source": {"generator": {"total": 5, "rpu": 100, "duration": "100ms"}}},
                  {"name": "map", "udf": {"map": {"handler": "tests.udfs:identity"}}},
                  {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                 [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
    port = free_port()
    runner.start("map", NATSFLOW_METRICS_PORT=str(port), NATSFLOW_METRICS_INTERVAL="5")  # not provisioned yet
    status, body = await wait_for(lambda: (r := get(port, "/readyz"))[0] == 503 and "not provisioned" in r[1] and r,
                                  30, "/readyz to answer 503 naming the buffers")
    assert body.startswith("not ready: ")
    assert f"buffer nf_{runner.name}_map not provisioned (run natsflow provision)" in body
    assert f"buffer nf_{runner.name}_out not provisioned" in body
    assert get(port, "/livez") == (200, "ok\n")  # alive all the same: no restart loop
    await runner.provision()
    # Not ready is re-checked every second (not every interval), so this turns quickly.
    assert await wait_for(lambda: get(port, "/readyz") == (200, "ready\n"), 5, "/readyz to answer 200")
    assert await runner.terminate("map") == 0


async def test_reduce_counts_late_inputs_as_acked(runner, nc):
    """A reduce acks a late input at once (dropped, no late edge): it counts in forwarder_ack_total
    like every other acked input, so read and ack totals agree once the windows are closed."""
    from tests.framework.test_reduce import consumed, publish, reduce_pipeline, source_stream

    out = await Collector().start(nc, f"{runner.name}.out")
    js = await source_stream(nc, runner)
    reduce_pipeline(runner, {"fixed": {"length": "10s"}})
    await runner.provision()
    port = free_port()
    runner.start("out")
    runner.start("agg", NATSFLOW_METRICS_PORT=str(port), NATSFLOW_METRICS_INTERVAL="0.3")
    runner.start("in")
    subj = f"{runner.name}.src"
    await publish(js, subj, [("a", t, t) for t in range(5)])  # window [0, 10)
    await consumed(nc, runner)
    await publish(js, subj, [("a", 40, 0)])  # the watermark passes 10 s: [0, 10) closes, [40, 50) stays open
    await out.wait_count(1, 30)
    await consumed(nc, runner)
    await publish(js, subj, [("a", 5, 0), ("a", 6, 0)])  # beyond the (zero) lateness of [0, 10)
    m = await wait_for(lambda: (m := scrape(port)) and m.get("forwarder_drop_total{reason=late}") == 2
                       and m["forwarder_ack_total"] == 7 and m, 15, "2 late inputs dropped and acked")
    assert m["forwarder_read_total"] == 8  # the one input not acked is held by the open window [40, 50)
    assert m["forwarder_read_batch_size_sum"] == 8 and m["forwarder_read_batch_size_count"] >= 2  # the late pair comes after the output, in a batch of its own
    assert len(out.msgs) == 1
