"""A source's retained input, read back by stream sequence or time for `natsflow replay`: the
archive stream of a source with `archive:` (natsflow's envelope per message), or a `jetstream`
source's own stream (what the user keeps, with its own retention).

Reading goes through an ephemeral consumer that acks nothing and is deleted afterwards (the
server removes it anyway after `READER_INACTIVE_S` without a fetch), so a replay neither moves
nor holds anything of the pipeline's own consumers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from nats import errors as nats_errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from framework.isb import names
from framework.isb.envelope import stream_sequence, stream_timestamp_ms
from framework.spec import Pipeline

READER_INACTIVE_S = 60.0
FETCH_WAIT_S = 2.0  # a fetch that waits this long without a message means the range has ended


class ReplayError(ValueError):
    """Why a replay cannot run, on one line (the CLI prints it and exits 1)."""


@dataclass(frozen=True, slots=True)
class Retained:
    """Where a source vertex's input is kept: `archived` (natsflow's archive stream, whose messages
    carry the envelope the source wrote) or a `jetstream` source's own stream."""

    vertex: str
    stream: str
    archived: bool


@dataclass(frozen=True, slots=True)
class Bound:
    """One end of a range: a stream sequence or an epoch-ms time (exactly one is set)."""

    seq: int | None = None
    time_ms: int | None = None

    def __str__(self) -> str:
        if self.seq is not None:
            return f"seq {self.seq}"
        assert self.time_ms is not None
        return datetime.fromtimestamp(self.time_ms / 1000, UTC).isoformat(timespec="milliseconds")


def retained_input(p: Pipeline, vertex: str) -> Retained:
    """The retained input of `vertex`; ReplayError when it is not a source or keeps none."""
    try:
        v = p.vertex(vertex)
    except KeyError as exc:
        raise ReplayError(exc.args[0]) from None
    if v.source is None:
        raise ReplayError(f"vertex {vertex!r} is a {v.kind}, not a source: only a source's input can be replayed")
    if v.source.archive is not None:
        return Retained(vertex, names.archive_stream_name(p.name, vertex), archived=True)
    if v.source.kind == "jetstream":
        stream: str = getattr(v.source.config, "stream")  # noqa: B009 - JetStreamSourceConfig, typed BaseModel here
        return Retained(vertex, stream, archived=False)
    raise ReplayError(f"source {vertex!r} ({v.source.kind}) keeps no input to replay: add `archive: {{maxAge: 1d}}` "
                      "to its source block (and run `natsflow provision`), or read from a jetstream source")


async def stream_range(js: JetStreamContext, r: Retained) -> tuple[int, int]:
    """(first, last) sequence the stream holds now; first > last when it is empty."""
    try:
        info = await js.stream_info(r.stream)
    except NotFoundError:
        hint = "run `natsflow provision` first" if r.archived else "the jetstream source's stream is missing"
        raise ReplayError(f"stream {r.stream!r} of source {r.vertex!r} does not exist: {hint}") from None
    state = info.state
    if state.messages == 0:  # an empty stream reports first 0 (never written) or last + 1 (all gone)
        return state.last_seq + 1, state.last_seq
    return state.first_seq, state.last_seq


def _reader_config(start: Bound) -> api.ConsumerConfig:
    config = api.ConsumerConfig(
        name=f"replay-{uuid.uuid4().hex[:16]}", ack_policy=api.AckPolicy.NONE, inactive_threshold=READER_INACTIVE_S,
        mem_storage=True, num_replicas=1, description="natsflow replay reader")
    if start.seq is not None:
        config.deliver_policy = api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = max(1, start.seq)
    else:
        assert start.time_ms is not None
        config.deliver_policy = api.DeliverPolicy.BY_START_TIME
        config.opt_start_time = datetime.fromtimestamp(start.time_ms / 1000, UTC)
    return config


async def read_range(js: JetStreamContext, r: Retained, start: Bound, end_seq: int, end_time_ms: int | None,
                     batch: int) -> AsyncIterator[list[Msg]]:
    """The stream's messages from `start` to `end_seq` (and stored no later than `end_time_ms`),
    in order, in batches of up to `batch`. Ends early when the stream has no more (messages past
    their maxAge are gone)."""
    config = _reader_config(start)
    assert config.name is not None
    await js.add_consumer(r.stream, config)
    psub = await js.pull_subscribe_bind(consumer=config.name, stream=r.stream)
    try:
        while True:
            try:
                msgs = await psub.fetch(batch, timeout=FETCH_WAIT_S)
            except (TimeoutError, nats_errors.TimeoutError):
                return
            within = [m for m in msgs if stream_sequence(m) <= end_seq
                      and (end_time_ms is None or stream_timestamp_ms(m) <= end_time_ms)]
            if within:
                yield within
            if len(within) < len(msgs) or (msgs and stream_sequence(msgs[-1]) >= end_seq):
                return
    finally:
        await psub.unsubscribe()
        try:
            await js.delete_consumer(r.stream, config.name)
        except (NotFoundError, TimeoutError, nats_errors.Error):
            pass  # it goes by itself after READER_INACTIVE_S
