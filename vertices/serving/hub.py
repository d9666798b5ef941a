"""One subscription per serving replica to every new write in the requests bucket, handed to the
requests this replica is waiting for: a `sync` request then costs no consumer of its own (a KV
watch per request would create one on the server for each). Only for requests whose id is new
(no result can predate the subscription); `fetch`, SSE and client-keyed retries read a
request's existing keys with their own watch (source.py: Follow)."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext, api

from framework.isb import names
from framework.isb.requests import RequestState

log = logging.getLogger("natsflow.serving")


@dataclass
class Waiter:
    """A request this replica answers: its ledger so far, set `changed` on each write."""

    state: RequestState = field(default_factory=RequestState)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def until_complete(self, deadline: float) -> None:
        """Raises TimeoutError at `deadline` (monotonic)."""
        while not self.state.complete:
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            await asyncio.wait_for(self.changed.wait(), left)


class Hub:
    def __init__(self, js: JetStreamContext, pipeline: str):
        self.js = js
        self.bucket = names.requests_bucket(pipeline)
        self.prefix = names.kv_subjects(self.bucket)[:-1]  # "$KV.<bucket>."
        self.waiters: dict[str, Waiter] = {}
        self.sub: Subscription | None = None

    async def start(self) -> None:
        self.sub = await self.js.subscribe(
            names.kv_subjects(self.bucket), stream=names.kv_stream_name(self.bucket), cb=self._on_msg,
            ordered_consumer=True, deliver_policy=api.DeliverPolicy.NEW, pending_msgs_limit=-1,
            pending_bytes_limit=-1)

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[len(self.prefix):]
        waiter = self.waiters.get(key.split(".", 1)[0])
        if waiter is not None:
            waiter.state.apply(key, msg.data)
            waiter.changed.set()

    def register(self, rid: str) -> Waiter:
        waiter = self.waiters[rid] = Waiter()
        return waiter

    def release(self, rid: str) -> None:
        self.waiters.pop(rid, None)

    async def close(self) -> None:
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception as exc:  # closing anyway: the consumer expires on the server
                log.debug("hub unsubscribe: %s", exc)
