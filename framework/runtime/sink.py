"""The sink vertex: writes each batch to the sink. A failing write is retried with
`retryStrategy.backoff`; after `steps` retries `onFailure` decides: `retry` keeps going (the
pipeline backs up through its buffers, nothing is lost), `fallback` writes the batch to the
fallback sink with the error in `Nf-Error`, `drop` counts and acks it. Datums a sink rejects as
unwritable go to the fallback sink, or to the dead-letter stream when there is none."""

from __future__ import annotations

import logging
from typing import Any

from nats.aio.msg import Msg

from framework.connector import (
    ConnectorContext,
    DatumsRejected,
    PartialWrite,
    load_connector,
)
from framework.isb import envelope
from framework.isb.ports import Reads
from framework.runtime.bounded import within
from framework.runtime.forward import ForwardLoop
from framework.runtime.retry import pause, sink_delays
from framework.runtime.udf import VertexFailure
from framework.sdk import Datum
from framework.spec import OnFailure, Sink

log = logging.getLogger("natsflow.worker")


class _FallbackDown(Exception):
    pass


class SinkProcessor:
    """The BatchProcessor of a sink vertex (and its fallback sink)."""
    def __init__(self, loop: ForwardLoop, cfg: Sink, sink: Any, fallback: Any | None):
        self.loop = loop
        self.rt = loop.rt
        self.cfg = cfg
        self.sink = sink
        self.fallback = fallback

    @classmethod
    async def open(cls, loop: ForwardLoop) -> SinkProcessor:
        rt = loop.rt
        cfg = rt.v.sink
        assert cfg is not None
        ctx = ConnectorContext(rt.p.name, rt.v.name, rt.settings, loop.io.nc, rt.stopping,
                               base_dir=rt.base_dir)
        sink = load_connector("sink", cfg.kind, cfg.config)
        await sink.start(ctx)
        fallback = None
        if cfg.fallback is not None:
            fb = cfg.fallback
            fallback = load_connector("sink", fb.kind, fb.config)
            await fallback.start(ctx)
        return cls(loop, cfg, sink, fallback)

    async def read(self, reader: Reads) -> list[Msg]:
        return await reader.fetch(self.rt.limits.read_timeout)

    async def close(self) -> None:
        try:
            await self.sink.close()
        finally:
            if self.fallback is not None:
                await self.fallback.close()

    async def process(self, msgs: list[Msg]) -> bool:
        try:
            return await self._write_batch(msgs)
        except _FallbackDown:  # stopping while the fallback fails: all back (at-least-once)
            await self.loop.reader.nak(msgs)
            return False
        except VertexFailure as exc:  # e.g. the sink's own program died: retrying cannot help
            return await self.loop.fail_vertex(msgs, str(exc))

    async def _write_batch(self, msgs: list[Msg]) -> bool:
        rt, metrics, name = self.rt, self.rt.metrics, self.rt.v.name
        good, failed = self.loop.decode(msgs)
        await self.loop.dead_letter(failed)
        pending = good
        strategy = self.cfg.retry_strategy
        delays = sink_delays(strategy.backoff)
        retries = 0
        while pending:
            try:
                with metrics.sink_time.time():
                    await within(self.sink.write([d for _, d in pending]), self.cfg.timeout)
                metrics.written("sink", len(pending))
                return True
            except DatumsRejected as exc:  # bad datums out, the rest is written again right away
                rejected = [(pending[i], reason) for i, reason in sorted(exc.reasons.items())]
                await self.reject(rejected)
                rest = [md for i, md in enumerate(pending) if i not in exc.reasons]
                if exc.rest_written:
                    metrics.written("sink", len(rest))
                    return True
                pending = rest
                continue
            except VertexFailure:
                raise
            except PartialWrite as exc:  # only what failed is tried again
                metrics.error.inc(1)
                metrics.written("sink", len(pending) - len(exc.failed))
                pending = [pending[i] for i in sorted(exc.failed)]
                errors = [exc.failed[i] for i in sorted(exc.failed)]
            except Exception as exc:
                metrics.error.inc(1)
                errors = [f"{type(exc).__name__}: {exc}"] * len(pending)
                rt.check_stuck()  # a hung sink's threads: past the limit, hand the batch back and exit
            error = errors[0]
            if rt.stopping.is_set():
                log.warning("sink %s failing while stopping (%s); handing %d messages back", name, error, len(pending))
                await self._hand_back(msgs, pending)
                return False
            if strategy.on_failure is not OnFailure.retry and retries >= strategy.backoff.steps:
                await self.give_up(pending, errors, strategy.on_failure)
                return True
            delay = next(delays)
            retries += 1
            log.warning("sink %s write of %d failed: %s; retry %d in %.2fs", name, len(pending), error, retries, delay)
            await pause(delay, rt.stopping)  # a stop request ends the wait early
        return True

    async def _hand_back(self, msgs: list[Msg], pending: list[tuple[Msg, Datum]]) -> None:
        """While stopping: ack what was handled (written, rejected, dead-lettered), NAK the rest."""
        unhandled = {id(m) for m, _ in pending}
        done = [m for m in msgs if id(m) not in unhandled]
        await self.loop.reader.ack(done)
        self.rt.metrics.ack.inc(len(done))
        await self.loop.reader.nak([m for m, _ in pending])

    async def give_up(self, pending: list[tuple[Msg, Datum]], errors: list[str], on_failure: OnFailure) -> None:
        if on_failure is OnFailure.drop:
            self.rt.metrics.dropped("sink_failure", len(pending))
            log.warning("sink %s: dropped %d message(s) after %d retries; error: %s", self.rt.v.name,
                        len(pending), self.cfg.retry_strategy.backoff.steps, errors[0])
            return
        await self.reject(list(zip(pending, errors, strict=True)))

    async def reject(self, rejected: list[tuple[tuple[Msg, Datum], str]]) -> None:
        """Datums the sink will not take: to the fallback sink with the error, else dead-lettered."""
        if self.fallback is None:
            await self.loop.dead_letter([(m, error) for (m, _), error in rejected])
            return
        rt, name = self.rt, self.rt.v.name
        out = [envelope.with_error(d, error, name) for (_, d), error in rejected]
        delays = sink_delays(self.cfg.retry_strategy.backoff)
        while True:  # a failing fallback backs the pipeline up like a failing sink with onFailure retry
            try:
                await within(self.fallback.write(out), self.cfg.timeout)
                break
            except Exception as exc:
                rt.metrics.error.inc(1)
                if rt.stopping.is_set():
                    raise _FallbackDown() from exc
                delay = next(delays)
                log.warning("sink %s: fallback write of %d failed: %s: %s; retrying in %.2fs", name,
                            len(out), type(exc).__name__, exc, delay)
                await pause(delay, rt.stopping)
        rt.metrics.fallback.inc(len(out))
        log.warning("sink %s: %d message(s) written to the fallback sink; first error: %s", name,
                    len(out), rejected[0][1])
