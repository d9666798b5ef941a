"""`udsink`: a user's Python function is the sink: `def write(datums: list[Datum]) -> None`
(sync runs in a thread, async is awaited). Raising fails the whole batch, which is retried."""

from __future__ import annotations

from framework.connector import ConnectorContext, Threads, load_handler
from framework.sdk import Datum, handler_kind
from framework.spec.types import Handler


class UserSink:
    def __init__(self, config: Handler):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        self.fn = load_handler(self.cfg.handler, ctx.base_dir)
        self.is_async = handler_kind(self.fn) == "async"
        self.threads = Threads("natsflow-sink")  # a write cancelled at sink.timeout leaves its thread

    async def write(self, datums: list[Datum]) -> None:
        if self.is_async:
            await self.fn(datums)
        else:
            await self.threads.call(self.fn, datums)

    async def close(self) -> None:
        pass
