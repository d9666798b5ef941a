"""batchMap: like map, but the handler takes a whole batch of datums (a model, a bulk lookup);
a read waits up to `maxWait` for the batch to fill before calling it."""

from __future__ import annotations

import time

from nats.aio.msg import Msg

from framework.isb.ports import Reads
from framework.runtime.bounded import Threads
from framework.runtime.forward import ForwardLoop
from framework.runtime.map import MapProcessor
from framework.runtime.udf import BatchMapRunner
from framework.spec import Udf, load_handler
from framework.spec.udf import BatchMap


class BatchMapProcessor(MapProcessor):
    """A MapProcessor with a BatchMapRunner and a read that lets the batch fill up."""

    def __init__(self, loop: ForwardLoop, udf: Udf, bm: BatchMap, threads: Threads | None = None):
        fn = load_handler(bm.handler, loop.rt.base_dir)
        super().__init__(loop, udf, BatchMapRunner(fn, bm.max_batch_size, udf.timeout, threads))
        self.bm = bm

    @classmethod
    async def open(cls, loop: ForwardLoop, threads: Threads | None = None) -> BatchMapProcessor:
        """`threads`: where a plain handler runs (default: a lane of the vertex's own)."""
        udf = loop.rt.v.udf
        assert udf is not None and udf.batch_map is not None
        return cls(loop, udf, udf.batch_map, threads)

    async def read(self, reader: Reads) -> list[Msg]:
        msgs = await reader.fetch(self.rt.limits.read_timeout)
        if not msgs:
            return msgs
        # Give a model batch up to maxWait to fill up before calling it.
        bm, stopping = self.bm, self.rt.stopping
        deadline = time.monotonic() + bm.max_wait
        while len(msgs) < bm.max_batch_size and not stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            msgs += await reader.fetch(remaining)
        return msgs
