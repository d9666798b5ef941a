"""Unit-testing a pipeline file in one process, without a nats-server.

    from framework.testing import run_pipeline
    out = run_pipeline("examples/sentiment/pipeline.yaml", inputs={"in": [b"I love it", b"meh"]})
    assert out["positive"] == [b"I love it"]

How a run goes:
- Every vertex is the runtime's own vertex kind over an in-memory ISB (framework/testing/vertices.py,
  framework/isb/memory.py): the same handler calls, retries, routing by tags, fan-out, keyed
  partitions, reduce windows, dead-letter rules and message ids as a deployed pipeline.
- Sources are replaced: `inputs={"<source>": [...]}` feeds a source vertex (one not named gets
  no input). An item is `bytes`/`str` (event time: the wall clock at feeding, as a live source
  stamps it), a `Datum` or `Message` (its keys, headers and event time are kept), or
  `Watermark(t)`, which moves the source's watermark to `t` (epoch ms or datetime) there. Items
  between watermarks are emitted in batches of the vertex's `readBatchSize`, and after each batch
  the whole pipeline runs until nothing moves. The source's watermark follows the real rule
  (lowest event time of a batch - `maxDelay`); when its inputs end it jumps to the end of time, so
  every window still open closes, as idle sources eventually make happen in a deployment.
- Sinks are replaced, whatever their kind (`udsink` included: its handler is not called): what
  reaches sink vertex `s` is `out["s"]` (payloads) and `out.messages("s")` (Datums: keys, headers,
  event time, id), in arrival order. `call_sinks=["s"]` also runs sink `s`'s real connector
  (e.g. a `udsink` handler under test) with its retry and fallback rules; then `out["s"]` is what
  it accepted.
- Side inputs: `side_inputs={"<name>": value}` (bytes, str, or JSON-able, encoded as the manager
  stores a handler's result); every side input a vertex lists must be given.
- Dead letters: `out.dead_letters["<vertex>"]` lists what the vertex dead-lettered, in order.
- A pipeline still moving after `max_rounds` rounds (a cycle that never lets go) raises
  HarnessError; so does a vertex that runs its own program (`command`/`container`), which needs
  NATS to talk to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from framework.connector import SourceRecord
from framework.isb import envelope, names
from framework.isb.memory import MemoryISB, MemoryMsg
from framework.sdk import Datum, Message
from framework.sideinputs.manager import SideInputWatcher, encode_value
from framework.spec import Pipeline, load_pipeline
from framework.testing.vertices import (
    MemoryReading,
    MemoryReduce,
    MemorySource,
    MemoryVertex,
    memory_vertex,
)
from framework.watermark.marks import UNKNOWN

END_OF_TIME = envelope.EVENT_TIME_RANGE[1]  # the watermark of a source whose inputs have ended
DEFAULT_MAX_ROUNDS = 10_000


class HarnessError(RuntimeError):
    """The pipeline cannot run in memory as asked (unknown vertex, missing side input, a cycle that
    does not end, a program vertex)."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """An input item that moves its source's watermark to `at` (epoch ms or an aware datetime)."""

    at: int | datetime

    @property
    def ms(self) -> int:
        return int(self.at.timestamp() * 1000) if isinstance(self.at, datetime) else int(self.at)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message a vertex dead-lettered: its payload and headers as they came, and why."""

    value: bytes
    error: str
    keys: list[str]
    headers: dict[str, str]  # user headers (natsflow's envelope and Nf-Error* left out)


InputItem = bytes | str | Datum | Message | Watermark
Step = Callable[[], Awaitable[None]]  # one batch emitted, or one watermark moved


class PipelineOutput(Mapping[str, list[bytes]]):
    """What reached each sink (`out[sink]`: payloads; `out.messages(sink)`: Datums) and what
    each vertex dead-lettered (`out.dead_letters[vertex]`)."""

    def __init__(self, sinks: dict[str, list[Datum]], dead_letters: dict[str, list[DeadLetter]]):
        self._sinks = sinks
        self.dead_letters = dead_letters

    def __getitem__(self, sink: str) -> list[bytes]:
        return [d.value for d in self.messages(sink)]

    def messages(self, sink: str) -> list[Datum]:
        try:
            return list(self._sinks[sink])
        except KeyError:
            raise KeyError(f"{sink!r} is not a sink vertex (sinks: {', '.join(self._sinks)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._sinks)

    def __len__(self) -> int:
        return len(self._sinks)

    def __repr__(self) -> str:
        return f"PipelineOutput({ {k: self[k] for k in self._sinks}!r}, dead_letters={self.dead_letters!r})"


def run_pipeline(pipeline: str | Path | Pipeline, inputs: Mapping[str, Iterable[InputItem]],
                 side_inputs: Mapping[str, Any] | None = None, *, call_sinks: Collection[str] = (),
                 max_rounds: int = DEFAULT_MAX_ROUNDS) -> PipelineOutput:
    """Run `pipeline` (a file, or a loaded Pipeline) in this process on `inputs` and return what
    reached its sinks. For use inside a running event loop, `await arun_pipeline(...)`."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_pipeline(pipeline, inputs, side_inputs, call_sinks=call_sinks, max_rounds=max_rounds))
    raise HarnessError("run_pipeline() called inside a running event loop; use `await arun_pipeline(...)`")


async def arun_pipeline(pipeline: str | Path | Pipeline, inputs: Mapping[str, Iterable[InputItem]],
                        side_inputs: Mapping[str, Any] | None = None, *, call_sinks: Collection[str] = (),
                        max_rounds: int = DEFAULT_MAX_ROUNDS) -> PipelineOutput:
    """`run_pipeline` as a coroutine."""
    if isinstance(pipeline, Pipeline):
        p, base_dir = pipeline, None
    else:
        path = Path(pipeline)
        p, base_dir = load_pipeline(path), path.parent
    run = _Run(p, base_dir, max_rounds, set(call_sinks))
    _set_side_inputs(p, side_inputs or {})
    await run.setup()
    try:
        await run.feed({name: list(items) for name, items in inputs.items()})
    finally:
        await run.teardown()
    return run.output()


def _set_side_inputs(p: Pipeline, values: Mapping[str, Any]) -> None:
    """Give every side input the vertices list its value, as their watches would on start."""
    listed = sorted({n for v in p.spec.vertices for n in v.side_inputs})
    missing = [n for n in listed if n not in values]
    if missing:
        raise HarnessError(f"side input(s) {', '.join(missing)} listed by vertices need a value: "
                           f"side_inputs={{{missing[0]!r}: b'...'}}")
    watcher = SideInputWatcher(None, listed)
    for n in listed:
        value = encode_value(values[n])
        if value is None:
            raise HarnessError(f"side input {n!r}: None is not a value")
        watcher.observe(n, value, "PUT", 1)


class _Run:
    def __init__(self, p: Pipeline, base_dir: Path | None, max_rounds: int, call_sinks: set[str]):
        self.p = p
        self.max_rounds = max_rounds
        sinks = {v.name for v in p.spec.vertices if v.kind == "sink"}
        if call_sinks - sinks:
            raise HarnessError(f"call_sinks names {', '.join(sorted(call_sinks - sinks))}, which is not a sink "
                               f"vertex (sinks: {', '.join(sorted(sinks))})")
        for v in p.spec.vertices:
            if v.udf is not None and v.udf.is_program:
                raise HarnessError(f"vertex {v.name!r} runs its own program (command/container); the in-memory "
                                   "harness runs Python handlers only")
        self.isb = MemoryISB()
        for v in p.reading_vertices():
            limits = p.limits_for(v.name)
            for part in p.partitions(v.name):
                self.isb.add_stream(names.stream_name(p.name, v.name, part),
                                    [names.edge_subject(p.name, v.name, e.from_, part) for e in p.in_edges(v.name)],
                                    limits.buffer_max_length)
        for v in p.spec.vertices:  # every vertex may dead-letter (a source: records it cannot store)
            self.isb.add_stream(names.dlq_stream_name(p.name, v.name), [names.dlq_subject(p.name, v.name)])
        self.order, self.back_edges = _order(p)
        self.vertices: dict[str, MemoryVertex] = {
            name: memory_vertex(p, name, self.isb, base_dir, self._input_watermark(name), name in call_sinks)
            for name in self.order}

    def _input_watermark(self, name: str) -> Callable[[], int]:
        """The lowest output watermark of the vertices feeding `name` (edges closing a cycle aside)."""
        ins = [e.from_ for e in self.p.in_edges(name) if (e.from_, name) not in self.back_edges]

        def current() -> int:
            return min((self.output_watermark(u) for u in ins), default=UNKNOWN)
        return current

    def output_watermark(self, name: str) -> int:
        """A source's and a reduce's watermark is their own; a map passes its input's on."""
        vx = self.vertices[name]
        if isinstance(vx, (MemorySource, MemoryReduce)):
            return vx.output_watermark
        return vx.input_watermark()

    async def setup(self) -> None:
        for vx in self.vertices.values():
            await vx.setup()

    async def teardown(self) -> None:
        for vx in self.vertices.values():
            await vx.teardown()

    async def feed(self, inputs: dict[str, list[InputItem]]) -> None:
        sources = {v.name for v in self.p.spec.vertices if v.kind == "source"}
        unknown = [n for n in inputs if n not in sources]
        if unknown:
            raise HarnessError(f"inputs name {', '.join(map(repr, unknown))}, which is not a source vertex "
                               f"(sources: {', '.join(sorted(sources))})")
        steps = {name: list(self._steps(name, items)) for name, items in inputs.items()}
        # Round robin over the sources, one batch (or watermark) each, draining after each one.
        while any(steps.values()):
            for todo in steps.values():
                if todo:
                    await todo.pop(0)()
                    await self.drain()
        for name in sorted(sources):
            source = self.vertices[name]
            assert isinstance(source, MemorySource)
            await source.advance(END_OF_TIME)
        await self.drain()

    def _steps(self, name: str, items: list[InputItem]) -> Iterator[Step]:
        source = self.vertices[name]
        assert isinstance(source, MemorySource)
        size = self.p.limits_for(name).read_batch_size
        batch: list[SourceRecord] = []
        for i, item in enumerate(items):
            if isinstance(item, Watermark):
                if batch:
                    yield _emitting(source, batch)
                    batch = []
                yield _advancing(source, item.ms)
                continue
            batch.append(_record(item, str(i)))
            if len(batch) == size:
                yield _emitting(source, batch)
                batch = []
        if batch:
            yield _emitting(source, batch)

    async def drain(self) -> None:
        for _ in range(self.max_rounds):
            before = self._stored()
            moved = False
            for name in self.order:
                moved = await self.vertices[name].step() or moved
            if not moved and self._stored() == before:
                return
        busy = [s.name for s in self.isb.streams.values() if s.pending]
        raise HarnessError(f"the pipeline still moves after {self.max_rounds} rounds (buffers with messages: "
                           f"{', '.join(busy) or 'none'}): a cycle that never lets its messages go?")

    def _stored(self) -> int:
        return sum(s.last_seq for s in self.isb.streams.values())

    def output(self) -> PipelineOutput:
        sinks = {}
        for name, vx in self.vertices.items():
            if isinstance(vx, MemoryReading) and vx.recorder is not None:
                sinks[name] = vx.recorder.datums
        dead = {v.name: [_dead_letter(m) for m in self.isb.streams[names.dlq_stream_name(self.p.name, v.name)].pending]
                for v in self.p.spec.vertices}
        return PipelineOutput(sinks, dead)


def _emitting(source: MemorySource, batch: list[SourceRecord]) -> Step:
    return lambda: source.emit(batch)


def _advancing(source: MemorySource, wm: int) -> Step:
    return lambda: source.advance(wm)


def _record(item: InputItem, offset: str) -> SourceRecord:
    """A source record for one input item; `offset` (its index) names it, as an upstream offset."""
    keys = item.keys if isinstance(item, (Datum, Message)) else None
    if keys is not None and (isinstance(keys, (str, bytes)) or not all(isinstance(k, str) for k in keys)):
        raise TypeError(f"input item {offset}: keys must be a list of str, got {keys!r}")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return SourceRecord(bytes(item), offset, _now_ms())
    if isinstance(item, str):
        return SourceRecord(item.encode(), offset, _now_ms())
    if isinstance(item, Datum):
        return SourceRecord(item.value, offset, item.event_time_ms, list(item.keys) or None,
                            dict(item.headers) or None, item.id or None)
    if isinstance(item, Message):
        et = int(item.event_time.timestamp() * 1000) if item.event_time else _now_ms()
        value = item.value.encode() if isinstance(item.value, str) else item.value
        return SourceRecord(value, offset, et, list(item.keys) if item.keys else None,
                            dict(item.headers) if item.headers else None)
    raise TypeError(f"input item {offset} is a {type(item).__name__}; expected bytes, str, Datum, Message "
                    "or Watermark")


def _now_ms() -> int:
    return int(time.time() * 1000)


def _dead_letter(m: MemoryMsg) -> DeadLetter:
    h = m.headers
    try:
        keys = envelope.decode_keys(h.get(envelope.HDR_KEYS))
    except ValueError:
        keys = []
    own = envelope.RESERVED_HEADERS | {envelope.HDR_ERROR, envelope.HDR_ERROR_VERTEX}
    return DeadLetter(m.data, h.get(envelope.HDR_ERROR, ""), keys, {k: v for k, v in h.items() if k not in own})


def _order(p: Pipeline) -> tuple[list[str], set[tuple[str, str]]]:
    """Vertices upstream first (depth-first from the sources, in spec order), and the edges that
    close a cycle (they do not hold a vertex's input watermark back)."""
    post: list[str] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    back: set[tuple[str, str]] = set()

    def visit(name: str) -> None:
        state[name] = 1
        for e in p.out_edges(name):
            s = state.get(e.to)
            if s == 1:
                back.add((name, e.to))
            elif s is None:
                visit(e.to)
        state[name] = 2
        post.append(name)

    for v in p.spec.vertices:
        if v.kind == "source" and v.name not in state:
            visit(v.name)
    for v in p.spec.vertices:  # unreachable from a source: still built, never fed
        if v.name not in state:
            visit(v.name)
    return list(reversed(post)), back

