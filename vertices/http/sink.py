"""`http`: one request per message (`method` to `url`, up to `concurrency` in flight), the payload
as the body. A response outside 2xx is a failure.

Each request carries `Idempotency-Key: <data id>` (so a receiver can ignore a retried request), the
natsflow HTTP source's headers (`X-Natsflow-Id`, `X-Natsflow-Keys`, `X-Natsflow-Event-Time`, so
one pipeline can post into another), the configured `headers`, and the message's own headers (a
fallback's `Nf-Error` among them). A 4xx other than 408 and 429 means the receiver refuses that
message: it goes to the fallback sink or the dead-letter stream and the batch goes on. Any other
failure retries only the messages that were not answered 2xx.
"""

from __future__ import annotations

import asyncio

import aiohttp

from framework.connector import ConnectorContext, DatumsRejected, PartialWrite, mask_url
from framework.sdk import Datum
from vertices.http.config import HttpSinkConfig as Config

SKIP_HEADERS = {"host", "content-length", "content-type", "transfer-encoding", "connection"}
RETRYABLE_4XX = {408, 429}


class HttpStatusError(Exception):
    def __init__(self, method: str, url: str, status: int, body: str):
        self.status = status
        super().__init__(f"{method} {url} answered {status}: {body[:200]}")


class HttpSink:
    def __init__(self, config: Config):
        self.cfg = config
        self.shown_url = mask_url(config.url)  # errors end up in logs and Nf-Error: no credentials there

    async def start(self, ctx: ConnectorContext) -> None:
        # The pool must hold `concurrency` connections (aiohttp's default is 100): a request waiting
        # for a pooled connection would spend its timeout there.
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
                                             connector=aiohttp.TCPConnector(limit=self.cfg.concurrency))
        self.limit = asyncio.Semaphore(self.cfg.concurrency)

    def headers(self, d: Datum) -> dict[str, str]:
        h = {k: v for k, v in d.headers.items() if k.lower() not in SKIP_HEADERS}
        h.update(self.cfg.headers)
        h.update({"Idempotency-Key": d.id, "X-Natsflow-Id": d.id, "X-Natsflow-Event-Time": str(d.event_time_ms),
                  "Content-Type": "application/octet-stream"})
        if d.keys:
            h["X-Natsflow-Keys"] = ",".join(d.keys)
        return h

    async def send(self, d: Datum) -> None:
        method = self.cfg.method.value
        try:
            async with self.limit, self.session.request(method, self.cfg.url, data=d.value,
                                                        headers=self.headers(d)) as resp:
                body = await resp.text(errors="replace")
        except TimeoutError:
            raise TimeoutError(f"{method} {self.shown_url}: no answer within {self.cfg.timeout}s") from None
        if not 200 <= resp.status < 300:
            raise HttpStatusError(method, self.shown_url, resp.status, body)

    async def write(self, datums: list[Datum]) -> None:
        results = await asyncio.gather(*(self.send(d) for d in datums), return_exceptions=True)
        refused: dict[int, str] = {}
        failed: dict[int, str] = {}
        for i, res in enumerate(results):
            if res is None:
                continue
            if isinstance(res, HttpStatusError) and 400 <= res.status < 500 and res.status not in RETRYABLE_4XX:
                refused[i] = f"{type(res).__name__}: {res}"
            else:
                failed[i] = f"{type(res).__name__}: {res}"
        if failed:  # retry only what was not answered 2xx (refusals too: they get their turn next)
            if len(failed) == len(datums):
                raise results[0]
            raise PartialWrite({**failed, **refused})
        if refused:
            raise DatumsRejected(refused, rest_written=True)

    async def close(self) -> None:
        await self.session.close()
