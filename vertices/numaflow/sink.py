"""The `numaflow` sink connector: a Numaflow SDK sink program written to over gRPC
(framework/numaflow/sinker.py). Per datum the program answers SUCCESS, FAILURE (retried under the
vertex's retryStrategy, with the SDK's error text), FALLBACK (to the vertex's fallback sink, else
the dead-letter stream), ON_SUCCESS (to `onSuccess`) or SERVE (counted as written)."""

from __future__ import annotations

import os
from typing import Any

from framework.connector import ConnectorContext, DatumsRejected, PartialWrite, load_connector
from framework.numaflow.launch import SIDECARS_ENV, launch_of
from framework.numaflow.sinker import FAILURE, FALLBACK, ON_SUCCESS, SUCCESS, NumaflowSink, SinkResult
from framework.sdk import Datum
from framework.spec.programs import container_only
from vertices.numaflow.config import NumaflowSinkConfig

FALLBACK_REASON = "the numaflow sink asked for the fallback sink"
WRITTEN = SinkResult(SUCCESS)


class NumaflowSinkConnector:
    def __init__(self, config: NumaflowSinkConfig):
        self.cfg = config
        self.on_success: Any | None = None
        self.done: set[str] = set()  # ids the program took in the previous call (see write)

    async def start(self, ctx: ConnectorContext) -> None:
        if not self.cfg.command and not os.environ.get(SIDECARS_ENV):
            raise ValueError(container_only(ctx.vertex, "sink.numaflow"))
        env = {k: str(v) for k, v in self.cfg.env.items()}  # secrets are resolved by load_connector
        self.program = NumaflowSink(launch_of(self.cfg, env, ctx.base_dir, ctx.pipeline, ctx.vertex))
        await self.program.start()
        target = self.cfg.on_success_sink()
        if target is not None:
            self.on_success = load_connector("sink", *target)
            await self.on_success.start(ctx)

    async def write(self, datums: list[Datum]) -> None:
        # A batch with both FALLBACK and FAILURE answers comes back without its fallbacks; what
        # the program took the first time is not sent to it again.
        done, self.done = self.done, set()
        todo = [d for d in datums if d.id not in done]
        results = await self.program.write(todo) if todo else []
        by_id = {d.id: r for d, r in zip(todo, results)}
        results = [by_id.get(d.id, WRITTEN) for d in datums]
        succeeded: list[Datum] = []
        for d, r in zip(datums, results):
            if r.status == ON_SUCCESS:
                value, keys = r.on_success if r.on_success is not None else (d.value, d.keys)
                succeeded.append(Datum(keys, value, headers=d.headers, id=d.id, event_time_ms=d.event_time_ms))
        if succeeded and self.on_success is not None:
            await self.on_success.write(succeeded)
        failed = {i: r.error or "the numaflow sink reported a failure" for i, r in enumerate(results)
                  if r.status == FAILURE}
        fallback = {i: FALLBACK_REASON for i, r in enumerate(results) if r.status == FALLBACK}
        if fallback:
            if failed:  # the worker sends the rest again: only the failed ones reach the program
                self.done = {d.id for i, d in enumerate(datums) if i not in failed and i not in fallback}
            raise DatumsRejected(fallback, rest_written=not failed)
        if failed:
            raise PartialWrite(failed)

    async def close(self) -> None:
        try:
            await self.program.stop()
        finally:
            if self.on_success is not None:
                await self.on_success.close()
