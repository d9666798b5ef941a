"""A sink's `retryStrategy` and `fallback`: an always-failing sink sends everything to its fallback
with the error text, `drop` counts what it drops, and the spec rejects fallbacks that cannot work."""

from __future__ import annotations

import urllib.request

import pytest

from framework.local.embedded import free_port
from framework.spec import Sink, SpecError, parse_pipeline
from tests.conftest import wait_for
from tests.vertices.test_http_sink import Receiver, all_through, feed, pipeline


def metric(port: int, name: str, missing: float | None = 0.0, **labels: str) -> float | None:
    """One sample from the worker's /metrics (`missing` when it has none yet), or None when the
    worker does not answer yet."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return missing


async def test_always_failing_sink_sends_everything_to_fallback_with_error(runner, nc):
    receiver = await Receiver(lambda body: 500).start()
    port = free_port()
    try:
        stream = await feed(nc, runner, 400)
        fb_stream = f"FB_{runner.name}"
        pipeline(runner, stream, {
            "http": {"url": receiver.url},
            "retryStrategy": {"backoff": {"interval": "10ms", "steps": 2, "jitter": 0.5}, "onFailure": "fallback"},
            "fallback": {"jetstream": {"stream": fb_stream, "subject": f"{runner.name}.fb"}},
        })
        await runner.provision()
        runner.start("out", NATSFLOW_METRICS_PORT=str(port))
        runner.start("in")
        js = nc.jetstream()

        async def in_fallback() -> bool:
            try:
                return (await js.stream_info(fb_stream)).state.messages >= 400
            except Exception:
                return False

        await wait_for(in_fallback, 60, "400 messages in the fallback stream")
        await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
        assert (await js.stream_info(fb_stream)).state.messages == 400
        psub = await js.pull_subscribe(f"{runner.name}.fb", durable=None, stream=fb_stream)
        msgs = await psub.fetch(400, timeout=5)
        assert sorted(m.data for m in msgs) == sorted(f"m{i}".encode() for i in range(400))
        assert all(m.headers["Nf-Error"].startswith(f"HttpStatusError: POST {receiver.url} answered 500")
                   and m.headers["Nf-Error-Vertex"] == "out" for m in msgs)
        assert receiver.calls == 400 * 3  # the first try and two retries, then the fallback
        assert await wait_for(lambda: metric(port, "forwarder_fallback_total") == 400, 10, "fallback counter")
        assert metric(port, "forwarder_drop_total", reason="sink_failure") == 0
    finally:
        await receiver.stop()


async def test_drop_counts_what_it_drops(runner, nc):
    receiver = await Receiver(lambda body: 503).start()
    port = free_port()
    try:
        stream = await feed(nc, runner, 250)
        pipeline(runner, stream, {"http": {"url": receiver.url},
                                  "retryStrategy": {"backoff": {"interval": "5ms", "steps": 1}, "onFailure": "drop"}})
        await runner.provision()
        runner.start("out", NATSFLOW_METRICS_PORT=str(port))
        runner.start("in")
        await wait_for(lambda: metric(port, "forwarder_drop_total", reason="sink_failure") == 250, 60,
                       "250 drops counted")
        await wait_for(lambda: runner.drained(nc), 30, "buffers to drain")
        assert receiver.calls == 250 * 2 and receiver.stored == []
        assert metric(port, "forwarder_drop_total", reason="sink_failure") == 250
        assert metric(port, "forwarder_fallback_total") == 0
        assert "dropped 100 message(s) after 1 retries; error: HttpStatusError" in runner.log("out")
    finally:
        await receiver.stop()


@pytest.mark.parametrize("raw, error", [
    ({"log": {}, "retryStrategy": {"onFailure": "fallback"}}, "a fallback sink is required"),
    ({"log": {}, "fallback": {"log": {}, "fallback": {"log": {}}}}, "cannot have a fallback of its own"),
    ({"log": {}, "retryStrategy": {"onFailure": "later"}}, "retryStrategy.onFailure"),
    ({"log": {}, "retryStrategy": {"backoff": {"steps": -1}}}, "retryStrategy.backoff.steps"),
    ({"retryStrategy": {}}, "exactly one of: log, blackhole"),
    ({"postgres": {"dsn": "postgresql://x/y", "table": "t", "mode": "upsert"}}, "needs keyColumns"),
    ({"redis": {"stream": "s", "list": "l"}}, "exactly one of stream or list"),
    ({"http": {"url": "ftp://x"}}, "http.url"),
])
def test_spec_errors_name_the_field(raw, error):
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
           "spec": {"vertices": [{"name": "in", "source": {"generator": {}}}, {"name": "out", "sink": raw}],
                    "edges": [{"from": "in", "to": "out"}]}}
    with pytest.raises(SpecError) as exc:
        parse_pipeline(doc, file="p.yaml")
    assert str(exc.value).startswith("p.yaml: spec.vertices[1].sink") and error in str(exc.value)


def test_defaults_keep_retrying_forever():
    s = Sink.model_validate({"log": {}})
    assert s.kind == "log" and s.retry_strategy.on_failure.value == "retry" and s.fallback is None
    s = Sink.model_validate({"http": {"url": "http://h"}, "retryStrategy": {"onFailure": "fallback"},
                             "fallback": {"redis": {"list": "dead"}}})
    assert s.kind == "http" and s.fallback.kind == "redis"


async def test_sink_down_backs_up_through_buffers_then_delivers_everything(runner, nc):
    state = {"up": False}
    receiver = await Receiver(lambda body: 200 if state["up"] else 503).start()
    try:
        stream = await feed(nc, runner, 1500)
        runner.write([{"name": "in", "source": {"jetstream": {"stream": stream}}},
                      {"name": "out", "sink": {"http": {"url": receiver.url}}}],
                     [{"from": "in", "to": "out"}],
                     limits={"readBatchSize": 50, "bufferMaxLength": 200, "bufferUsageLimit": 50})
        await runner.start_all()
        buffer = f"nf_{runner.name}_out"
        await wait_for(lambda: runner.log("out").count("answered 503") >= 5, 30, "five failed writes")
        # The source stopped at the sink's full buffer: the rest waits upstream, unread.
        src = await nc.jetstream().consumer_info(stream, f"nf_{runner.name}_in_src")
        assert await runner.stream_messages(nc, buffer) <= 200
        assert src.num_pending + src.num_ack_pending >= 1500 - 200
        assert receiver.stored == []
        state["up"] = True
        await wait_for(lambda: all_through(nc, runner, stream, 1500), 90, "1500 records through")
        bodies = sorted(b for b, _ in receiver.stored)
        assert bodies == sorted(f"m{i}".encode() for i in range(1500))
    finally:
        await receiver.stop()


def test_udsink_fallback_handler_is_checked():
    doc = {"apiVersion": "natsflow.io/v1", "kind": "Pipeline", "metadata": {"name": "p"},
           "spec": {"vertices": [{"name": "in", "source": {"generator": {}}},
                                 {"name": "out", "sink": {"log": {},
                                                          "fallback": {"udsink": {"handler": "tests.udfs:nope"}}}}],
                    "edges": [{"from": "in", "to": "out"}]}}
    with pytest.raises(SpecError) as exc:
        parse_pipeline(doc, file="p.yaml")
    assert str(exc.value) == ("p.yaml: spec.vertices[1].sink.fallback.udsink.handler: "
                              "module 'tests.udfs' has no attribute 'nope'")


async def test_partial_failure_retries_only_what_failed(runner, nc):
    seen: set[bytes] = set()

    def status(body: bytes) -> int:
        if body.endswith(b"5"):
            return 500  # always: ends in the fallback with its own error
        if body.endswith(b"3") and body not in seen:
            seen.add(body)
            return 503  # once: the retry succeeds
        return 200

    receiver = await Receiver(status).start()
    try:
        stream = await feed(nc, runner, 100)
        fb_stream = f"FB_{runner.name}"
        pipeline(runner, stream, {
            "http": {"url": receiver.url},
            "retryStrategy": {"backoff": {"interval": "10ms", "steps": 2}, "onFailure": "fallback"},
            "fallback": {"jetstream": {"stream": fb_stream, "subject": f"{runner.name}.fb"}},
        })
        await runner.start_all()
        await wait_for(lambda: all_through(nc, runner, stream, 100), 60, "100 records through")
        assert sorted(b for b, _ in receiver.stored) == sorted(f"m{i}".encode() for i in range(100) if i % 10 != 5)
        assert receiver.calls == 100 + 10 + 10 * 2  # each "3" once more, each "5" twice more
        js = nc.jetstream()
        assert (await js.stream_info(fb_stream)).state.messages == 10
        msgs = await (await js.pull_subscribe(f"{runner.name}.fb", durable=None, stream=fb_stream)).fetch(10, timeout=5)
        assert sorted(m.data for m in msgs) == sorted(f"m{i}".encode() for i in range(5, 100, 10))
        assert all("answered 500: status 500" in m.headers["Nf-Error"] for m in msgs)
    finally:
        await receiver.stop()
