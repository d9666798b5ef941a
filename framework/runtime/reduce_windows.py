"""The windows of one reduce partition: which open windows an input joins (or whether it is
late), and how a closed window's result is computed and named. Used by runtime/reduce.py."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from framework.isb.ports import Reads
from framework.observability.metrics import VertexMetrics
from framework.observability.tracing import VertexTracer
from framework.runtime.bounded import HandlerTimeout, Threads, within
from framework.runtime.ownership import Lease
from framework.runtime.retry import udf_delays
from framework.runtime.routing import Outgoing, as_bytes, message_tags
from framework.runtime.udf import normalize
from framework.sdk import Datum, Message, Window, handler_kind
from framework.spec import Retry, WindowSpec
from framework.watermark.fetcher import WatermarkFetcher
from framework.watermark.marks import UNKNOWN
from framework.windows import OpenWindow, add_to_sessions, assign

WindowKey = tuple[tuple[str, ...], int, int]


@dataclass
class Partition:
    """One reduce partition this replica reads: its lease, reader, watermark and open windows."""
    index: int | None
    lease: Lease
    reader: Reads
    fetcher: WatermarkFetcher
    windows: dict[WindowKey, OpenWindow] = field(default_factory=dict)  # fixed and sliding
    sessions: dict[tuple[str, ...], list[OpenWindow]] = field(default_factory=dict)
    refs: dict[int, list[Any]] = field(default_factory=dict)  # stream seq -> [open windows left, msg]
    processed_seq: int = 0
    wm: int = UNKNOWN
    # Inputs previous owners held unacked when we took over (all with stream seq <= recover_to):
    # until all are back (or recover_by passes), no window closes, so newer messages cannot make
    # them look late; they were on time when first taken, so they are not judged late again.
    recovering: int = 0
    recover_to: int = 0
    recover_by: float = 0.0
    returned: set[int] = field(default_factory=set)

    def open_windows(self) -> list[OpenWindow]:
        return list(self.windows.values()) + [s for ss in self.sessions.values() for s in ss]

    def place(self, spec: WindowSpec, keys: tuple[str, ...], d: Datum, m: Msg, seq: int, wm: int,
              lateness: int) -> bool:
        """Add the input to every open window it belongs to; False when it is late for all."""
        et = d.event_time_ms
        if spec.session is not None:
            timeout = int(spec.session.timeout * 1000)
            open_sessions = self.sessions.get(keys, [])
            joins_open = any(s.start <= et + timeout and et <= s.end for s in open_sessions)
            if et + timeout + lateness <= wm and not joins_open:
                return False
            add_to_sessions(self.sessions.setdefault(keys, []), keys, et, timeout, (d, m))
            self.refs[seq] = [1, m]
            return True
        wins = [(s, e) for s, e in assign(spec, et) if e + lateness > wm]
        if not wins:
            return False
        for s, e in wins:
            self.windows.setdefault((keys, s, e), OpenWindow(keys, s, e)).items.append((d, m))
        self.refs[seq] = [len(wins), m]
        return True

    def forget(self, session: bool, w: OpenWindow) -> None:
        """An emitted window leaves the partition."""
        if session:
            sessions = self.sessions.get(w.keys, [])
            if w in sessions:
                sessions.remove(w)
            if not sessions:
                self.sessions.pop(w.keys, None)
        else:
            self.windows.pop((w.keys, w.start, w.end), None)


class WindowEmitter:
    """Calls the reduce handler on a closed window (retried with the UDF's `retry`, each call
    bounded by its `timeout`) and names the results."""

    def __init__(self, vertex: str, fn: Callable[..., Any], retry: Retry, timeout: float,
                 metrics: VertexMetrics, tracer: VertexTracer | None):
        self.vertex = vertex
        self.fn = fn
        self.retry = retry
        self.timeout = timeout
        self.metrics = metrics
        self.tracer = tracer
        self.threads = Threads("natsflow-reduce")

    async def traced_emit(self, ps: Partition, w: OpenWindow) -> list[Outgoing]:
        """With tracing on, one span per window result, linked to its inputs' spans; the results
        carry its context (docs/metrics.md)."""
        if self.tracer is None:
            return await self.emit(ps, w)
        span, headers = self.tracer.start_window((d.headers for d, _ in w.items),
                                                 f"{','.join(w.keys)}@{w.start}-{w.end}")
        try:
            out = await self.emit(ps, w)
        except Exception as exc:
            self.tracer.end([span] if span else [], f"{type(exc).__name__}: {exc}")
            raise
        for o in out:
            o.headers = {**o.headers, **headers} if o.headers else headers
        self.tracer.end([span] if span else [])
        return out

    async def emit(self, ps: Partition, w: OpenWindow) -> list[Outgoing]:
        window = Window.from_ms(w.start, w.end)
        datums = [d for d, _ in w.items]
        delays = udf_delays(self.retry)
        while True:
            try:
                results = await within(self._call(list(w.keys), datums, window), self.timeout)
                break
            except Exception as exc:
                self.metrics.error.inc(1)
                delay = next(delays, None)
                if delay is None or isinstance(exc, HandlerTimeout):  # a hung call is not tried again
                    raise
                await asyncio.sleep(delay)
        key_hash = hashlib.sha1("\x1f".join(w.keys).encode()).hexdigest()[:16]
        base = f"{self.vertex}:{ps.index or 0}:{key_hash}:{w.start}:{w.end}"
        data_id = f"{','.join(w.keys)}@{w.start}-{w.end}"
        out = []
        for i, msg in enumerate(results):
            if msg.is_drop:
                continue
            out.append(Outgoing(f"{base}:{i}", data_id if i == 0 else f"{data_id}:{i}", as_bytes(msg.value),
                                w.end, list(w.keys) if msg.keys is None else list(msg.keys),
                                dict(msg.headers) if msg.headers else None, message_tags(msg)))
        return out

    async def _call(self, keys: list[str], datums: list[Datum], window: Window) -> list[Message]:
        fn: Any = self.fn() if inspect.isclass(self.fn) else self.fn
        kind = handler_kind(fn)
        if kind == "async_generator":
            return [m async for m in fn(keys, iter(datums), window)]
        if kind == "async":
            return normalize(await fn(keys, iter(datums), window))
        return normalize(await self.threads.call(fn, keys, iter(datums), window))
