"""Per-vertex counters (prometheus-client). Names follow Numaflow's forwarder_* family."""

from __future__ import annotations

import threading
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - probes every few seconds would flood the log
        pass


class VertexMetrics:
    def __init__(self, pipeline: str, vertex: str, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        labels = ("pipeline", "vertex")
        base = {"pipeline": pipeline, "vertex": vertex}

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels + extra, registry=self.registry)

        self._read = counter("forwarder_read_total", "messages read from the vertex's buffer")
        self._ack = counter("forwarder_ack_total", "input messages acknowledged")
        self._write = counter("forwarder_write_total", "messages written to out-edge buffers", ("to_vertex",))
        self._drop = counter("forwarder_drop_total", "messages dropped, by reason", ("reason",))
        self._error = counter("forwarder_udf_error_total", "failed UDF or sink calls (before retry)")
        self._dlq = counter("forwarder_dead_letter_total", "messages sent to the dead-letter stream")
        self._fallback = counter("forwarder_fallback_total", "messages a sink gave up on, written to its fallback sink")
        self._upstream = Gauge("source_upstream_backlog", "what the upstream system reports a source has not "
                               "finished: state=lag (not yet read) or pending (read, not acknowledged)",
                               labels + ("state",), registry=self.registry)
        self._batch = Histogram(
            "forwarder_udf_batch_seconds", "time to process one read batch", labels, registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        ).labels(**base)
        self.read = self._read.labels(**base)
        self.ack = self._ack.labels(**base)
        self.error = self._error.labels(**base)
        self.dlq = self._dlq.labels(**base)
        self.fallback = self._fallback.labels(**base)
        self._base = base

    def written(self, to_vertex: str, n: int) -> None:
        if n:
            self._write.labels(to_vertex=to_vertex, **self._base).inc(n)

    def dropped(self, reason: str, n: int) -> None:
        if n:
            self._drop.labels(reason=reason, **self._base).inc(n)

    def upstream_backlog(self, state: str, n: int) -> None:
        self._upstream.labels(state=state, **self._base).set(n)

    def observe_batch(self, seconds: float) -> None:
        self._batch.observe(seconds)

    def serve(self, port: int, ready: Callable[[], bool], addr: str = "0.0.0.0") -> WSGIServer:
        """Prometheus metrics on /metrics, `/livez` (the process answers) and `/readyz` (connected
        and serving) for Kubernetes probes, on one port, in a daemon thread."""
        metrics_app = make_wsgi_app(self.registry)

        def app(environ, start_response):
            path = environ.get("PATH_INFO", "")
            if path == "/livez":
                start_response("200 OK", [("Content-Type", "text/plain")])
                return [b"ok\n"]
            if path == "/readyz":
                ok = ready()
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"ready\n" if ok else b"not ready\n"]
            return metrics_app(environ, start_response)

        server = make_server(addr, port, app, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="natsflow-metrics", daemon=True).start()
        return server

    def snapshot(self) -> dict[str, float]:
        """Flat name{labels} -> value, for the shutdown log line and tests."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name.endswith("_total"):
                    extra = {k: v for k, v in s.labels.items() if k not in ("pipeline", "vertex")}
                    suffix = "".join(f"[{v}]" for v in extra.values())
                    out[s.name + suffix] = s.value
        return out
