"""Reading a buffer: pull, hold, keep in progress, ack or nak. The only place that sends
JetStream acknowledgement tokens.

The hot path talks the JetStream wire protocol directly (pull requests on one inbox) because
nats-py's fetch() costs a timer and a future wrapper per message; see docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from framework.isb import names
from framework.isb.envelope import HDR_PENDING_MESSAGES, HDR_STATUS, stream_sequence
from framework.transport.client import reply_all, subscribe_fast

log = logging.getLogger("natsflow.buffer")

QUIET_POLL_S = 0.1
PULL_EXPIRES_S = 5.0  # how long a pull request may wait on the server
REQUEST_EXPIRY_MARGIN_S = 0.25

# JetStream acknowledgement tokens, sent to a delivered message's reply subject.
ACK, NAK, ACK_IN_PROGRESS = b"+ACK", b"-NAK", b"+WPI"
# Status of a pull request that ended: 408 expired, 404 no messages, 409 e.g. consumer deleted.
_REQUEST_ENDED = ("408", "404", "409")


class BufferReader:
    """Pulls from a durable consumer with pull requests kept in flight, so the next batch is
    already arriving while the current one is processed. Holds at most 2 × batch_size messages
    fetched ahead, plus whatever the caller has not acked or nak'd yet.

    Every message it delivers stays *held* until the caller passes it to `ack` or `nak`: while
    held — handed out or still waiting in the read-ahead — it is kept in progress (`+WPI` every
    ack_wait / 3), so however long a UDF or a sink stalls, JetStream never redelivers it to
    another replica and nothing is processed twice without a crash.

    `may_send`, when given, is asked before anything goes to the consumer (a pull request, an ack,
    a nak, an in-progress): while it answers False the reader sends nothing. A reduce partition's
    lease uses it to fence a replica that can no longer prove it owns the partition.
    """

    def __init__(self, nc: Client, stream: str, consumer: str, batch_size: int, expires: float = PULL_EXPIRES_S,
                 ack_wait: float = 30.0, may_send: Callable[[], bool] | None = None,
                 arrivals: asyncio.Event | None = None):
        self._nc = nc
        self._may_send = may_send
        self._arrivals = arrivals  # set on each delivery: one event shared by several readers
        self._batch = batch_size
        self._expires = expires
        self._ack_wait = ack_wait
        self.stream, self.consumer = stream, consumer
        self._next_subject = names.pull_subject(stream, consumer)
        self._inbox = nc.new_inbox()
        self._buf: collections.deque[Msg] = collections.deque()
        # stream sequence -> its newest delivery, until acked or nak'd (a redelivery of a held
        # message replaces the older delivery rather than being held twice)
        self._held: dict[int, Msg] = {}
        self._credit = 0  # messages requested and not yet delivered or expired
        self._arrived = asyncio.Event()
        self._last_response = time.monotonic()
        self._last_pull: float | None = None  # when the newest pull request was sent
        self._reconnects = nc.stats["reconnects"]
        self._sub: Subscription | None = None
        self._keep_alive: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        self._sub = await subscribe_fast(self._nc, self._inbox, self._on_msg)
        self._keep_alive = asyncio.create_task(self._beat(), name=f"in-progress-{self.stream}")

    @property
    def held(self) -> int:
        """Messages delivered to this reader and not yet acked or nak'd."""
        return len(self._held)

    @property
    def buffered(self) -> int:
        """Messages delivered and not handed out yet: a fetch(0) returns some of them."""
        return len(self._buf)

    def _on_msg(self, msg: Msg) -> None:
        self._last_response = time.monotonic()
        if msg.reply:
            self._credit -= 1
            self._buf.append(msg)
            self._held[stream_sequence(msg)] = msg
            self._arrived.set()
            if self._arrivals is not None:
                self._arrivals.set()
            return
        hdrs = msg.headers or {}
        status = hdrs.get(HDR_STATUS)
        if status in _REQUEST_ENDED:
            left = hdrs.get(HDR_PENDING_MESSAGES)
            if left is not None:
                self._credit -= int(left)
            else:
                self._credit = 0  # request gone without an account of its credit: pull afresh
            self._credit = max(self._credit, 0)
            self._arrived.set()
        # 100 = idle heartbeat; nothing to do

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 3)
            if self._held:
                try:
                    await self._reply(list(self._held.values()), ACK_IN_PROGRESS)
                except (TimeoutError, nats_errors.Error) as exc:
                    # Reconnecting: the next beat tries again (a beat is a third of the ack wait).
                    log.warning("in-progress beat for %d held messages of %s failed: %s",
                                len(self._held), self.stream, exc)

    async def _top_up(self) -> None:
        if self._closed or (self._may_send is not None and not self._may_send()):
            return
        reconnects = self._nc.stats["reconnects"]
        if reconnects != self._reconnects:
            # Our pull requests lived on the old connection's server side: pull afresh at once
            # rather than after they would have expired.
            self._reconnects = reconnects
            self._credit = 0
        elif self._credit > 0 and time.monotonic() - self._last_response > 2 * self._expires + 1:
            # The server answered nothing for longer than a request lives: forget the credit
            # and pull again.
            self._credit = 0
        want = 2 * self._batch - len(self._buf) - self._credit
        if want >= self._batch // 2 or (want > 0 and self._credit == 0):
            req = json.dumps({"batch": want, "expires": int(self._expires * 1e9)}).encode()
            if self._credit == 0:
                self._last_response = time.monotonic()  # staleness counts from this request
            self._credit += want
            self._last_pull = time.monotonic()
            await self._nc.publish(self._next_subject, req, reply=self._inbox)

    async def fetch(self, timeout: float) -> list[Msg]:
        """Up to batch_size messages; waits at most `timeout` for the first one."""
        await self._top_up()
        if not self._buf:
            deadline = time.monotonic() + timeout
            while not self._buf and not self._closed:
                self._arrived.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
                await self._top_up()
        n = min(self._batch, len(self._buf))
        out = [self._buf.popleft() for _ in range(n)]
        await self._top_up()
        return out

    async def ack(self, msgs: list[Msg]) -> None:
        """Done with these: JetStream removes them from the work-queue buffer."""
        self._release(msgs)
        await self._reply(msgs, ACK)

    async def nak(self, msgs: list[Msg]) -> None:
        """Hand these back for redelivery (to any replica). They are released before the token
        is sent: if it cannot be sent (connection lost), the ack wait still ends and JetStream
        redelivers them; the deterministic msg ids drop what was already written.

        Once the reader is interrupted (stopping) the redelivery is delayed until the pull
        requests it still has open have expired: the server redelivers a nak'd message into any
        open request, ours included, and one that arrives after we stopped listening would be
        lost to the closed inbox until its ack wait ends."""
        self._release(msgs)
        delay = self._open_requests_left() if self._closed else 0.0
        await self._reply(msgs, NAK if delay <= 0 else b'-NAK {"delay": %d}' % int(delay * 1e9))

    def _open_requests_left(self) -> float:
        """Seconds until the last pull request this reader sent has surely expired (a margin for
        the server's timer), 0 when it never sent one."""
        if self._last_pull is None:
            return 0.0
        return max(0.0, self._last_pull + self._expires + REQUEST_EXPIRY_MARGIN_S - time.monotonic())

    def _release(self, msgs: list[Msg]) -> None:
        held = self._held
        for m in msgs:
            held.pop(stream_sequence(m), None)

    async def _reply(self, msgs: list[Msg], token: bytes) -> None:
        if self._may_send is not None and not self._may_send():
            return
        await reply_all(self._nc, msgs, token)

    def interrupt(self) -> None:
        """Wake a waiting fetch() so a stopping worker does not wait out the read timeout."""
        self._closed = True
        self._arrived.set()

    async def close(self) -> None:
        """Stop pulling and hand back what was fetched ahead and never handed out. Messages the
        caller still holds stay its to ack or nak; they are no longer kept in progress."""
        self._closed = True
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None
        if self._sub is not None:
            # Drain, not unsubscribe: what the server sent before it saw the UNSUB arrives before
            # the flush's PONG and is handed back below rather than left for its ack wait.
            try:
                if self._nc.is_connected:
                    await self._sub.drain()  # type: ignore[no-untyped-call]  # untyped in nats-py
                else:  # reconnecting: a flush would wait for the server; nothing arrives meanwhile
                    await self._sub.unsubscribe()
            except nats_errors.Error:  # the connection is closing or closed: nothing more comes
                pass
            self._sub = None
        unread = list(self._buf)
        self._buf.clear()
        await self.nak(unread)


def held_inputs_back_within(ack_wait: float, lease_ttl: float) -> float:
    """How long a new owner of a partition waits for the inputs previous readers held: a dead
    reader's come back once their ack wait ends (up to two: one may just have been renewed by
    +WPI) after its lease ran out; a stopping one nak'd them with a delay of up to its pull expiry."""
    return 2 * ack_wait + lease_ttl + PULL_EXPIRES_S + REQUEST_EXPIRY_MARGIN_S


async def quiet_consumer(js: JetStreamContext, stream: str, consumer: str, go_on: Callable[[], bool],
                         who: str) -> ConsumerInfo | None:
    """Wait until no pull request of a previous reader waits on the consumer: the server drops
    requests whose reader unsubscribed or died, and a stuck one expires with its pull expiry.
    From then on only the caller receives the consumer's messages, and its ack-pending count is
    everything previous readers held. None: `go_on` said stop first (e.g. the lease ran out)."""
    warn_at = time.monotonic() + 10
    while go_on():
        info: ConsumerInfo = await js.consumer_info(stream, consumer)
        if not info.num_waiting:
            return info
        if time.monotonic() > warn_at:
            warn_at = time.monotonic() + 10
            log.warning("%s: %d pull request(s) of another reader still wait on %s; not reading it yet",
                        who, info.num_waiting, consumer)
        await asyncio.sleep(QUIET_POLL_S)
    return None
