"""OpenTelemetry tracing across vertices: W3C trace context travels in message headers.

One span per message per vertex. Before a message is handled, its `traceparent` header is
rewritten to the vertex's span, so outputs (which inherit the input's headers) carry the child
context and the next vertex's span becomes a child of this one. Off unless configured
(`tracing_enabled`); when off, workers hold `None` and the hot path pays one `is None` check per
batch. Design and configuration: docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from framework.isb.envelope import HDR_ID

log = logging.getLogger("natsflow.tracing")

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_LINKS = 128  # a window may hold thousands of inputs; span links are for following a sample
_TRUE = ("1", "true", "yes", "on")


def tracing_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """On when an OTLP endpoint, a traces exporter or NATSFLOW_TRACING is set; the standard
    OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none switch it off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return bool(exporter or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or env.get("NATSFLOW_TRACING", "").strip().lower() in _TRUE)


def make_exporters(env: Mapping[str, str] = os.environ) -> list[SpanExporter]:
    names = [n.strip() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",") if n.strip()]
    out: list[SpanExporter] = []
    for name in names:
        if name == "otlp":
            # Imported here: only tracing processes pay for loading protobuf and requests.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            out.append(OTLPSpanExporter())  # endpoint, headers, timeout from OTEL_EXPORTER_OTLP_*
        elif name == "console":
            out.append(ConsoleSpanExporter())
        else:
            raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r}; use otlp, console or none")
    return out


def make_provider(pipeline: str, vertex: str, env: Mapping[str, str] = os.environ) -> TracerProvider:
    attrs = {"natsflow.pipeline": pipeline, "natsflow.vertex": vertex}
    if not env.get("OTEL_SERVICE_NAME"):
        attrs[SERVICE_NAME] = f"{pipeline}-{vertex}"
    # The sampler comes from OTEL_TRACES_SAMPLER / _ARG (the SDK reads them); default: every root.
    provider = TracerProvider(resource=Resource.create(attrs))
    for exporter in make_exporters(env):
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _unsampled(traceparent: str) -> bool:
    """The sampled bit of a well-formed `traceparent`'s flags is 0."""
    flags = traceparent[-2:]
    return len(traceparent) == 55 and flags in _HEX_BYTES and not int(flags, 16) & 1


_HEX_BYTES = frozenset(f"{i:02x}" for i in range(256))


class VertexTracer:
    """Starts, links and ends the spans of one vertex's messages."""

    def __init__(self, provider: TracerProvider, vertex: str, kind: SpanKind, destination: str):
        self.provider = provider
        self._tracer = provider.get_tracer("natsflow")
        self._name = f"{vertex} publish" if kind is SpanKind.PRODUCER else f"{vertex} process"
        self._kind = kind
        self._attrs = {"messaging.system": "nats", "messaging.destination.name": destination}
        self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def from_env(cls, pipeline: str, vertex: str, source: bool, destination: str,
                 env: Mapping[str, str] = os.environ) -> VertexTracer | None:
        if not tracing_enabled(env):
            return None
        provider = make_provider(pipeline, vertex, env)
        if not isinstance(trace.get_tracer_provider(), TracerProvider):
            trace.set_tracer_provider(provider)  # a handler's own spans go to the same exporter
        log.info("tracing on for vertex %s", vertex)
        return cls(provider, vertex, SpanKind.PRODUCER if source else SpanKind.CONSUMER, destination)

    def start(self, headers: MutableMapping[str, str], message_id: str) -> Span | None:
        """A span for one message, child of its `traceparent`; rewrites the header to the new span.
        None when nothing is recorded (unsampled), so callers can skip ending it."""
        parent = headers.get(TRACEPARENT)
        if parent is not None and _unsampled(parent):
            return None  # the parent chose not to sample: pass its context through untouched
        ctx = self._propagator.extract(headers, context=Context()) if parent is not None else Context()
        attrs = dict(self._attrs)
        attrs["messaging.message.id"] = message_id
        span = self._tracer.start_span(self._name, context=ctx, kind=self._kind, attributes=attrs)
        sc = span.get_span_context()
        headers[TRACEPARENT] = f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
        if sc.trace_state:
            headers[TRACESTATE] = sc.trace_state.to_header()
        return span if span.is_recording() else None

    def start_window(self, inputs: Iterable[Mapping[str, str]], message_id: str) -> tuple[Span | None, dict[str, str]]:
        """A reduce result has many inputs, so no single parent: a new root span linked to (up to
        MAX_LINKS) sampled input spans. Returns the span (None if unsampled) and the headers that
        carry its context to the result's outputs."""
        links = []
        for h in inputs:
            parent = h.get(TRACEPARENT)
            if parent is None or _unsampled(parent):
                continue
            sc = trace.get_current_span(self._propagator.extract(h, context=Context())).get_span_context()
            if sc.is_valid:
                links.append(Link(sc))
                if len(links) == MAX_LINKS:
                    break
        attrs = dict(self._attrs)
        attrs["messaging.message.id"] = message_id
        span = self._tracer.start_span(self._name, context=Context(), kind=self._kind, attributes=attrs, links=links)
        sc = span.get_span_context()
        headers = {TRACEPARENT: f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"}
        return (span if span.is_recording() else None), headers

    def start_messages(self, msgs: Iterable) -> dict[int, Span]:
        """Spans for a batch of NATS messages, keyed by `id(msg)`; rewrites each `msg.headers`."""
        spans: dict[int, Span] = {}
        for m in msgs:
            if m.headers is None:
                m.headers = {}
            span = self.start(m.headers, m.headers.get(HDR_ID, ""))
            if span is not None:
                spans[id(m)] = span
        return spans

    @staticmethod
    def fail(spans: Mapping[int, Span] | None, msg, error: str) -> None:
        span = spans.get(id(msg)) if spans else None
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, error))

    @staticmethod
    def end(spans: Iterable[Span], error: str | None = None) -> None:
        for span in spans:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end()

    def shutdown(self) -> None:
        """Flush what the batch processor holds (blocking: call it in a thread)."""
        self.provider.shutdown()
