"""`log`: prints each message on the worker's stdout, one line each."""

from __future__ import annotations

import sys

from framework.connector import ConnectorContext
from framework.sdk import Datum
from vertices.log import LogConfig as Config


class LogSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        self.vertex = ctx.vertex

    async def write(self, datums: list[Datum]) -> None:
        lines = []
        for d in datums:
            keys = ",".join(d.keys)
            text = d.value.decode("utf-8", errors="replace")
            lines.append(f"{self.vertex} id={d.id} keys=[{keys}] {text}\n")
        sys.stdout.write("".join(lines))
        sys.stdout.flush()

    async def close(self) -> None:
        pass
