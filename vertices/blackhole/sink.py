"""`blackhole`: acknowledges and discards; for benchmarks and for branches nobody needs."""

from __future__ import annotations

from framework.connector import ConnectorContext
from framework.sdk import Datum
from vertices.blackhole import BlackholeConfig as Config


class BlackholeSink:
    def __init__(self, config: Config):
        self.cfg = config

    async def start(self, ctx: ConnectorContext) -> None:
        pass

    async def write(self, datums: list[Datum]) -> None:
        pass

    async def close(self) -> None:
        pass
