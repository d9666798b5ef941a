"""Tracing across processes: http source → map → sink, each its own process, exporting spans over
OTLP/HTTP to a receiver started by the test that decodes the protobuf requests."""

from __future__ import annotations

import gzip
import json
import secrets
import threading
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from framework.local.embedded import free_port
from framework.observability.tracing import VertexTracer, tracing_enabled
from tests.conftest import Collector, wait_for


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    name: str
    service: str
    kind: int
    error: str | None
    attributes: dict
    links: tuple = ()  # (trace id, span id) of each link


class OtlpReceiver:
    """A real OTLP/HTTP trace endpoint (`POST /v1/traces`, protobuf) on a free loopback port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    receiver.add(ExportTraceServiceRequest.FromString(body))
                raw = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._lock = threading.Lock()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, req: ExportTraceServiceRequest) -> None:
        got = []
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for s in ss.spans:
                    attrs = {a.key: a.value.string_value for a in s.attributes}
                    got.append(ReceivedSpan(s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(), s.name,
                                            service, s.kind, s.status.message if s.status.code == 2 else None,
                                            attrs, tuple((lk.trace_id.hex(), lk.span_id.hex()) for lk in s.links)))
        with self._lock:
            self.requests += 1
            self.spans.extend(got)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def post(port: int, vertex: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/vertices/{vertex}", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


async def test_one_trace_per_event_across_source_map_sink(runner, nc):
    otlp = OtlpReceiver()
    sink = await Collector().start(nc, f"{runner.name}.out")
    port = free_port()
    try:
        runner.write([{"name": "in", "source": {"http": {"port": port}}},
                      {"name": "map", "udf": {"map": {"handler": "tests.udfs:identity"}}},
                      {"name": "out", "sink": {"nats": {"subject": f"{runner.name}.out"}}}],
                     [{"from": "in", "to": "map"}, {"from": "map", "to": "out"}])
        await runner.start_all(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url, OTEL_BSP_SCHEDULE_DELAY="100")
        await wait_for(lambda: _ready(port), 30, "the HTTP source to listen")

        # 4 events inside the client's own traces, 3 without context, 1 the client chose not to sample.
        client = {f"c{i}": (secrets.token_hex(16), secrets.token_hex(8)) for i in range(4)}
        for data_id, (trace_id, span_id) in client.items():
            assert post(port, "in", data_id.encode(), {"X-Natsflow-Id": data_id,
                                                         "traceparent": f"00-{trace_id}-{span_id}-01",
                                                         "tracestate": "vendor=x"}) == 200
        for i in range(3):
            assert post(port, "in", f"r{i}".encode(), {"X-Natsflow-Id": f"r{i}"}) == 200
        unsampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        assert post(port, "in", b"u0", {"X-Natsflow-Id": "u0", "traceparent": unsampled}) == 200

        await sink.wait_count(8, 30)
        # 7 sampled events x 3 vertices; nothing for the unsampled one.
        await wait_for(lambda: len(otlp.spans) >= 21, 30, f"21 spans (have {len(otlp.spans)})")
        runner.stop_all()  # each worker flushes its exporter on SIGTERM: nothing more may arrive
        spans = list(otlp.spans)
        assert len(spans) == 21, [(s.service, s.attributes.get("messaging.message.id")) for s in spans]
        assert len({s.span_id for s in spans}) == 21
        by_event: dict[str, dict[str, ReceivedSpan]] = {}
        for s in spans:
            by_event.setdefault(s.attributes["messaging.message.id"], {})[s.service.rsplit("-", 1)[1]] = s
        assert sorted(by_event) == sorted([*client, "r0", "r1", "r2"])

        for data_id, chain in by_event.items():
            src, mp, snk = chain["in"], chain["map"], chain["out"]
            assert src.trace_id == mp.trace_id == snk.trace_id  # one trace across three processes
            assert mp.parent_id == src.span_id and snk.parent_id == mp.span_id
            assert (src.name, mp.name, snk.name) == ("in publish", "map process", "out process")
            assert (src.kind, mp.kind, snk.kind) == (4, 5, 5)  # PRODUCER, CONSUMER, CONSUMER
            assert src.service == f"{runner.name}-in" and mp.attributes["messaging.destination.name"] == \
                f"nf_{runner.name}_map"
            assert all(s.error is None for s in chain.values())
            if data_id in client:  # the HTTP client's traceparent is honoured
                assert src.trace_id == client[data_id][0] and src.parent_id == client[data_id][1]
            else:
                assert src.parent_id == ""  # a new root at the source
        assert len({by_event[f"r{i}"]["in"].trace_id for i in range(3)}) == 3

        # What leaves the sink carries the sink's span as parent, and the client's tracestate.
        out = {m.headers["Nf-Id"]: m.headers for m in sink.msgs}
        for data_id, chain in by_event.items():
            tp = out[data_id]["traceparent"]
            assert tp == f"00-{chain['out'].trace_id}-{chain['out'].span_id}-{tp[-2:]}" and int(tp[-2:], 16) & 1
        assert out["c0"]["tracestate"] == "vendor=x"
        assert out["u0"]["traceparent"] == unsampled  # passed through untouched
    finally:
        runner.stop_all()
        otlp.close()


async def test_failed_message_span_has_error_status(runner, nc):
    otlp = OtlpReceiver()
    try:
        runner.write([{"name": "in", "source": {"generator": {"total": 14, "rpu": 1000, "duration": "100ms"}}},
                      {"name": "score", "udf": {"map": {"handler": "tests.udfs:fail_multiples_of_7"},
                                                "retry": {"attempts": 1}}},
                      {"name": "out", "sink": {"blackhole": {}}}],
                     [{"from": "in", "to": "score"}, {"from": "score", "to": "out"}])
        await runner.start_all(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url, OTEL_BSP_SCHEDULE_DELAY="100")
        # 14 source spans, 14 map spans, 12 sink spans (seq 0 and 7 are dead-lettered)
        await wait_for(lambda: len(otlp.spans) >= 40, 30, f"40 spans (have {len(otlp.spans)})")
        runner.stop_all()
        spans = list(otlp.spans)
        assert len(spans) == 40
        failed = sorted(s.error for s in spans if s.error is not None)
        assert failed == ["ValueError: cannot score item 0", "ValueError: cannot score item 7"]
        assert {s.service for s in spans if s.error} == {f"{runner.name}-score"}
        assert len({s.trace_id for s in spans}) == 14  # the generator starts one trace per event
    finally:
        runner.stop_all()
        otlp.close()


def test_tracing_is_off_unless_configured():
    assert not tracing_enabled({})
    assert VertexTracer.from_env("p", "v", False, "nf_p_v", env={}) is None
    assert tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert tracing_enabled({"NATSFLOW_TRACING": "1"})
    assert tracing_enabled({"OTEL_TRACES_EXPORTER": "console"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not tracing_enabled({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"})


def test_unknown_exporter_is_named():
    import pytest

    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER: unsupported exporter 'jaeger'"):
        VertexTracer.from_env("p", "v", False, "nf_p_v", env={"OTEL_TRACES_EXPORTER": "jaeger"})


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return r.status == 200 and json.loads(r.read())["status"] == "ok"
    except OSError:
        return False


def test_sampling_ratio_at_the_source_and_parent_decision_downstream():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))  # sample no new root
    provider.add_span_processor(SimpleSpanProcessor(exported))
    source = VertexTracer(provider, "in", SpanKind.PRODUCER, "nf_p_map")
    reader = VertexTracer(provider, "map", SpanKind.CONSUMER, "nf_p_map")

    root: dict[str, str] = {}
    assert source.start(root, "a") is None  # not sampled: nothing recorded ...
    tp = root["traceparent"]
    assert len(tp) == 55 and not int(tp[-2:], 16) & 1  # ... but the decision travels downstream
    assert reader.start(root, "a") is None and root["traceparent"] == tp  # and is respected there

    client = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
    span = source.start(client, "b")  # a sampled caller wins over the source's ratio
    assert span is not None and client["traceparent"].startswith(f"00-{'ab' * 16}-")
    child = reader.start(client, "b")
    VertexTracer.end([span, child])
    finished = exported.get_finished_spans()
    assert [s.name for s in finished] == ["in publish", "map process"]
    assert finished[1].parent.span_id == finished[0].context.span_id


async def test_reduce_result_span_links_its_inputs(runner, nc):
    from tests.framework.test_reduce import T0, consumed, publish, reduce_pipeline, source_stream

    otlp = OtlpReceiver()
    out = await Collector().start(nc, f"{runner.name}.out")
    try:
        js = await source_stream(nc, runner)
        reduce_pipeline(runner, {"fixed": {"length": "10s"}})
        await runner.start_all(OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url, OTEL_BSP_SCHEDULE_DELAY="100")
        subj = f"{runner.name}.src"
        clients = [(secrets.token_hex(16), secrets.token_hex(8)) for _ in range(5)]
        for i, (trace_id, span_id) in enumerate(clients):  # 5 events of key a in window [0, 10)
            headers = {"Nf-Event-Time": str((T0 + i) * 1000), "Nf-Keys": '["a"]',
                       "traceparent": f"00-{trace_id}-{span_id}-01"}
            await js.publish(subj, json.dumps({"v": i}).encode(), headers=headers)
        await consumed(nc, runner)
        await publish(js, subj, [("a", 40, 100)])  # the watermark passes 10 s: [0, 10) closes
        await out.wait_count(1, 30)
        # 6 source spans, 1 window span, 1 sink span
        await wait_for(lambda: len(otlp.spans) >= 8, 30, f"8 spans (have {len(otlp.spans)})")
        runner.stop_all()
        spans = list(otlp.spans)
        assert len(spans) == 8
        sources = [s for s in spans if s.service == f"{runner.name}-in"]
        (window,) = [s for s in spans if s.service == f"{runner.name}-agg"]
        (sink,) = [s for s in spans if s.service == f"{runner.name}-out"]
        first_five = {s.trace_id: s for s in sources if s.trace_id in {t for t, _ in clients}}
        assert len(first_five) == 5  # each event's source span continues its client's trace
        assert window.parent_id == ""  # a new root: a window has many parents, linked instead
        assert window.attributes["messaging.message.id"] == f"a@{T0 * 1000}-{(T0 + 10) * 1000}"
        assert sorted(window.links) == sorted((s.trace_id, s.span_id) for s in first_five.values())
        assert sink.trace_id == window.trace_id and sink.parent_id == window.span_id
        assert json.loads(out.msgs[0].data)["count"] == 5
    finally:
        runner.stop_all()
        otlp.close()
