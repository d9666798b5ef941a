"""Per-vertex counters (prometheus-client). Names follow Numaflow's forwarder_* family."""

from __future__ import annotations

import asyncio
import copy
import math
import os
import time
from collections.abc import Callable

from nats import errors as nats_errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from framework.observability.http import BackgroundServer, ReadyCheck, health_app

SECONDS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)

__all__ = ["BufferProbe", "ReadyCheck", "VertexMetrics"]


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
        self._platform = counter("forwarder_platform_error_total",
                                 "batches left unacked because NATS failed mid-batch", ("reason",))

        self._histograms: dict[str, Histogram] = {}  # attribute -> the labelled family, for `stage`

        def histogram(name: str, doc: str, buckets: tuple[float, ...] = SECONDS_BUCKETS, attr: str = ""):
            family = Histogram(name, doc, labels, registry=self.registry, buckets=buckets)
            self._histograms[attr] = family
            return family.labels(**base)

        self._batch = histogram("forwarder_udf_batch_seconds", "time to process one read batch, read to ack",
                                attr="_batch")
        self.udf_time = histogram("forwarder_udf_processing_seconds", "time in the user function per read batch",
                                  attr="udf_time")
        self.sink_time = histogram("forwarder_sink_write_seconds", "time of one sink connector write call",
                                   attr="sink_time")
        self.batch_size = histogram("forwarder_read_batch_size", "messages per read batch", SIZE_BUCKETS,
                                    attr="batch_size")
        self._pending = Gauge("forwarder_buffer_pending", "messages in the vertex's buffer not yet delivered",
                              labels + ("buffer",), registry=self.registry)
        self._ack_pending = Gauge("forwarder_buffer_ack_pending", "messages delivered and not yet acked",
                                  labels + ("buffer",), registry=self.registry)
        self._watermark = Gauge("forwarder_watermark_ms", "the vertex's watermark, epoch ms (-1 = unknown)",
                                labels, registry=self.registry).labels(**base)
        self._wm_lag = Gauge("forwarder_watermark_lag_seconds", "now - watermark (NaN while unknown)",
                             labels, registry=self.registry).labels(**base)
        self._reduce = {name: Gauge(name, doc, labels, registry=self.registry) for name, doc in (
            ("reduce_partitions_owned", "partitions whose lease this reduce replica holds"),
            ("reduce_held_messages", "inputs this reduce replica holds unacked in open windows"),
            ("reduce_open_windows", "windows this reduce replica has open (keys x windows)"))}
        self._fused = Gauge("forwarder_fused_stage", "1 for each vertex run inside a fused chain: its chain "
                            "(vertex names joined by '>') and its position in it", labels + ("chain", "position"),
                            registry=self.registry)
        self.watch_watermark(lambda: -1)
        self._label(base)

    def _label(self, base: dict[str, str]) -> None:
        self.read = self._read.labels(**base)
        self.ack = self._ack.labels(**base)
        self.error = self._error.labels(**base)
        self.dlq = self._dlq.labels(**base)
        self.fallback = self._fallback.labels(**base)
        self._base = base

    def stage(self, vertex: str, chain: list[str]) -> VertexMetrics:
        """The metrics of `vertex`, a vertex of the fused `chain` this process runs: the same families
        in the same registry (one /metrics), labelled with that vertex and marked as a stage."""
        view = copy.copy(self)
        view._label({**self._base, "vertex": vertex})
        for attr, family in self._histograms.items():
            setattr(view, attr, family.labels(**view._base))
        self._fused.labels(chain=">".join(chain), position=str(chain.index(vertex)), **view._base).set(1)
        return view

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

    def platform_error(self, reason: str) -> None:
        self._platform.labels(reason=reason, **self._base).inc()

    def buffer_state(self, buffer: str, pending: int, ack_pending: int) -> None:
        self._pending.labels(buffer=buffer, **self._base).set(pending)
        self._ack_pending.labels(buffer=buffer, **self._base).set(ack_pending)

    def reduce_state(self, owned: int, held: int, windows: int) -> None:
        for name, n in (("reduce_partitions_owned", owned), ("reduce_held_messages", held),
                        ("reduce_open_windows", windows)):
            self._reduce[name].labels(**self._base).set(n)

    def watch_watermark(self, current: Callable[[], int]) -> None:
        """Read the watermark (epoch ms, < 0 = unknown) when scraped: nothing on the hot path."""
        self._watermark.set_function(lambda: float(current()))

        def lag() -> float:
            wm = current()
            return time.time() - wm / 1000 if wm >= 0 else math.nan

        self._wm_lag.set_function(lag)

    def serve(self, port: int, ready: ReadyCheck, addr: str = "0.0.0.0") -> BackgroundServer:
        """Prometheus metrics on /metrics, `/livez` (the process answers) and `/readyz` (200 when
        `ready()` finds nothing missing, else 503 with the reasons) for Kubernetes probes, on one
        port, in a daemon thread (framework/observability/http.py)."""
        return BackgroundServer(health_app(self.registry, ready), port, addr, name="natsflow-metrics").start()

    def snapshot(self) -> dict[str, float]:
        """Flat name{labels} -> value, for the shutdown log line and tests."""
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                # A fused chain's other vertices share the registry; unlabelled families (side inputs) count.
                if s.name.endswith("_total") and s.labels.get("vertex", self._base["vertex"]) == self._base["vertex"]:
                    extra = {k: v for k, v in s.labels.items() if k not in ("pipeline", "vertex")}
                    suffix = "".join(f"[{v}]" for v in extra.values())
                    out[s.name + suffix] = s.value
        return out


class BufferProbe:
    """In the background, every `interval` s: the vertex's own buffers' consumer info sets the
    pending gauges, and every buffer it reads or writes must exist for /readyz. Never on the hot
    path: a scrape or a probe reads the last result."""

    def __init__(self, js: JetStreamContext, metrics: VertexMetrics, own: list[str], out: list[str],
                 interval: float | None = None):
        self._js = js
        self._metrics = metrics
        self._own = own  # stream = durable consumer name (docs/protocol.md §1)
        self._out = out
        self._interval = interval if interval is not None else float(os.environ.get("NATSFLOW_METRICS_INTERVAL", "5"))
        self.missing: list[str] = ["buffers not checked yet"]
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.check()
            # Not ready: look again soon, so the pod turns ready quickly once provisioned.
            await asyncio.sleep(min(self._interval, 1.0) if self.missing else self._interval)

    async def check(self) -> None:
        missing = []
        for stream in self._own:
            try:
                info = await self._js.consumer_info(stream, stream)
                self._metrics.buffer_state(stream, info.num_pending, info.num_ack_pending)
            except (TimeoutError, nats_errors.Error) as exc:
                missing.append(_buffer_problem(stream, exc))
        for stream in self._out:
            try:
                await self._js.stream_info(stream)
            except (TimeoutError, nats_errors.Error) as exc:
                missing.append(_buffer_problem(stream, exc))
        self.missing = missing

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _buffer_problem(stream: str, exc: Exception) -> str:
    if isinstance(exc, NotFoundError):
        return f"buffer {stream} not provisioned (run natsflow provision)"
    return f"buffer {stream} unreadable ({type(exc).__name__})"
