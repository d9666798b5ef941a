"""`serve`: each datum it receives is a result of the serving request it belongs to (its
`Nf-Request-Id`), written to the requests bucket under its request part; the serving source
that holds the request (any replica) sees it through a KV watch. A datum of no request is
counted and skipped: there is nobody to answer."""

from __future__ import annotations

import logging

from framework.connector import ConnectorContext
from framework.isb.requests import RequestLedger
from framework.sdk import Datum
from vertices.serving.config import ServeSinkConfig as Config

log = logging.getLogger("natsflow.serving")


class ServeSink:
    def __init__(self, config: Config):
        self.cfg = config
        self.strays = 0

    async def start(self, ctx: ConnectorContext) -> None:
        self.ledger = RequestLedger(ctx.nc.jetstream(), ctx.pipeline)
        self.vertex = ctx.vertex

    async def write(self, datums: list[Datum]) -> None:
        strays = await self.ledger.results([(d.headers, d.value) for d in datums])
        if strays:
            if not self.strays:
                log.warning("serve sink %s: skipped %d datum(s) that belong to no serving request (a serve sink "
                            "answers the requests of a serving source)", self.vertex, strays)
            self.strays += strays

    async def close(self) -> None:
        pass
