"""map and flatmap: a runner turns a batch of datums into one result (a list of messages) per
datum; failed calls are retried with the UDF's `retry`, what still fails is dead-lettered."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from nats.aio.msg import Msg

from framework.isb import envelope, requests
from framework.isb.ports import Reads
from framework.runtime.bounded import HandlerTimeout, Threads
from framework.runtime.forward import ForwardLoop
from framework.runtime.retry import udf_delays
from framework.runtime.routing import (
    Outgoing,
    Router,
    UnpublishableOutput,
    as_bytes,
    message_tags,
)
from framework.runtime.udf import MapRunner, Result, Runs
from framework.sdk import Datum, Message
from framework.spec import Udf, load_handler


def map_output(prefix: str, origin: str, i: int, d: Datum, out: Message) -> Outgoing:
    """Output `i` of input `d` (whose origin is `origin`): ids depend only on (input, position)."""
    headers = d.headers or None
    if out.headers:
        headers = {**d.headers, **out.headers}
    msg_id = f"{prefix}{origin}:{i}"
    return Outgoing(
        msg_id=msg_id,
        # Output 0 keeps the input's id (a map keeps ids end to end); a later output is named
        # by its msg id, unique even when flatmaps are chained or a message cycles.
        data_id=d.id if i == 0 else msg_id,
        value=as_bytes(out.value),
        event_time_ms=int(out.event_time.timestamp() * 1000) if out.event_time else d.event_time_ms,
        keys=d.keys if out.keys is None else list(out.keys),
        headers=headers,
        tags=message_tags(out),
    )


def split_request(d: Datum, outputs: list[Outgoing], router: Router) -> int | None:
    """An input of a serving request that gives k != 1 outputs an edge takes (an output whose tags
    match no edge goes nowhere, so it is not a part): each becomes its own part of the request;
    returns k for the ledger's split record (framework/isb/requests.py)."""
    if envelope.HDR_REQUEST_ID not in d.headers:
        return None
    routed = [out for out in outputs if router.targets(out.tags, out.late)]
    parts = requests.split_parts(d.headers, len(routed))
    if parts is None:
        return None
    for out, headers in zip(routed, parts):
        out.headers = headers
    return len(routed)


class MapProcessor:
    """map and flatmap (and, with a batch runner, batchMap: runtime/batch_map.py)."""

    def __init__(self, loop: ForwardLoop, udf: Udf, runner: Runs):
        self.loop = loop
        self.rt = loop.rt
        self.router = loop.io.router
        self.udf = udf
        self.runner = runner
        self.prefix = self.rt.v.name + ":"

    @classmethod
    async def open(cls, loop: ForwardLoop, threads: Threads | None = None) -> MapProcessor:
        """`threads`: where plain handlers run (default: a lane of the vertex's own)."""
        udf = loop.rt.v.udf
        assert udf is not None and udf.handler is not None
        fn = load_handler(udf.handler.handler, loop.rt.base_dir)
        return cls(loop, udf, MapRunner(fn, udf.timeout, threads))

    async def read(self, reader: Reads) -> list[Msg]:
        return await reader.fetch(self.rt.limits.read_timeout)

    async def close(self) -> None:
        self.runner.close()

    async def process(self, msgs: list[Msg]) -> bool:
        loop, metrics = self.loop, self.rt.metrics
        good, failed = loop.decode(msgs)
        with metrics.udf_time.time():
            results = await self.runner.run([d for _, d in good])
        results = await self._retry(good, results)
        outgoing: list[Outgoing] = []
        splits: list[tuple[Mapping[str, str], int]] = []  # requests' inputs that did not give one output
        prefix = self.prefix
        tag_dropped = filtered = 0
        for (m, d), res in zip(good, results):
            if isinstance(res, BaseException):
                failed.append((m, f"{type(res).__name__}: {res}"))
                continue
            if not res:
                filtered += 1
                if envelope.HDR_REQUEST_ID in d.headers:
                    splits.append((d.headers, 0))
                continue
            origin = envelope.origin(m)
            kept = [i for i, out in enumerate(res) if not out.is_drop]
            try:
                mine = [map_output(prefix, origin, i, d, res[i]) for i in kept]
                split = split_request(d, mine, self.router)
                self.router.check_outputs(mine, kept)
            except (TypeError, UnpublishableOutput) as exc:  # e.g. a value that is not bytes: the input fails
                failed.append((m, f"{type(exc).__name__}: {exc}"))
                continue
            tag_dropped += len(res) - len(mine)
            outgoing.extend(mine)
            if split is not None:
                splits.append((d.headers, split))
        self.rt.count_writes(await self.router.write(outgoing))
        if splits and self.loop.io.requests is not None:  # after the outputs are stored
            await self.loop.io.requests.splits(splits)
        metrics.dropped("drop_tag", tag_dropped)
        metrics.dropped("filtered", filtered)
        await loop.dead_letter(failed)
        return True

    async def _retry(self, good: list[tuple[Msg, Datum]], results: list[Result]) -> list[Result]:
        delays = udf_delays(self.udf.retry)
        while True:
            failed_idx = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
            if not failed_idx:
                return results
            self.rt.metrics.error.inc(len(failed_idx))
            # A call that timed out is not tried again: it would most likely hang again.
            failed_idx = [i for i in failed_idx if not isinstance(results[i], HandlerTimeout)]
            if not failed_idx:
                return results
            delay = next(delays, None)
            if delay is None or self.rt.stopping.is_set():
                return results
            await asyncio.sleep(delay)
            again = await self.runner.run([good[i][1] for i in failed_idx])
            results = list(results)
            for i, r in zip(failed_idx, again):
                results[i] = r
