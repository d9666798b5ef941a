"""One bidirectional gRPC stream to an SDK program (MapFn, SourceTransformFn, SinkFn, ...): the
SDK's handshake first, then requests sent as they come and responses routed to whoever waits for
their id. How the stream ended decides what the callers see: the SDK reporting an exception of the
UDF (UdfError, with the SDK's text), or the program gone (ProgramDied)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc

from framework.numaflow.program import NumaflowProgram, ProgramDied

Req = TypeVar("Req")
Resp = TypeVar("Resp")

# pynumaflow ends a stream with INTERNAL and this text when the user's code raised (ERR_UDF_EXCEPTION_STRING).
UDF_ERROR_MARK = "UDF_EXECUTION_ERROR"
EXIT_WAIT_S = 3.0  # how long a failed stream waits for the program's exit, to report it as a death
CLOSE_WAIT_S = 2.0  # for the SDK to end the call after the last request


def acknowledges_start(response: Any) -> bool:
    """The SDK's answer to the handshake that opens each of its bidi streams (start of transmission)."""
    return bool(response.HasField("handshake") and response.handshake.sot)


class UdfError(RuntimeError):
    """The user's code raised inside the SDK; the text is the SDK's (e.g.
    `UDF_EXECUTION_ERROR(udf): ValueError("cannot map 'boom'")`). The SDK program exits after it."""


class _Closed:
    """Put into the request queue to end the request stream."""


class BidiStream(Generic[Req, Resp]):
    """`method` is the stub's stream-stream method; `id_of` names the waiter a response is for
    ("" for responses about the whole stream, e.g. a batch's end of transmission)."""

    def __init__(self, program: NumaflowProgram, method: Callable[..., Any], id_of: Callable[[Resp], str]):
        self.program = program
        self._method = method
        self._id_of = id_of
        self._requests: asyncio.Queue[Req | _Closed] = asyncio.Queue()
        self._waiting: dict[str, asyncio.Queue[Resp | BaseException]] = {}
        self._single: dict[str, asyncio.Future[Resp]] = {}
        self.failure: BaseException | None = None
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._closing = False

    async def _outgoing(self) -> AsyncIterator[Req]:
        while True:
            item = await self._requests.get()
            if isinstance(item, _Closed):
                return
            yield item

    async def open(self, handshake: Req, is_handshake: Callable[[Resp], bool]) -> None:
        """Start the call and exchange the SDK's start-of-transmission handshake."""
        self._call = self._method(self._outgoing())
        self._requests.put_nowait(handshake)
        try:
            first = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise await self._ended(exc) from None
        if first is grpc.aio.EOF or not is_handshake(first):
            raise ProgramDied(f"numaflow program {self.program.launch.label!r} did not answer the handshake "
                              f"(got {first!r})")
        self._reader = asyncio.create_task(self._read())

    def send(self, request: Req) -> None:
        if self.failure is not None:
            raise self.failure
        self._requests.put_nowait(request)

    def expect(self, rid: str) -> asyncio.Queue[Resp | BaseException]:
        """The queue `rid`'s responses arrive in (an exception: the stream failed); register it
        before sending the request."""
        q: asyncio.Queue[Resp | BaseException] = asyncio.Queue()
        if self.failure is not None:
            q.put_nowait(self.failure)
        self._waiting[rid] = q
        return q

    def expect_one(self, rid: str) -> asyncio.Future[Resp]:
        """A future for `rid`'s single response (unary map, transformer): lighter than a queue."""
        fut: asyncio.Future[Resp] = asyncio.get_running_loop().create_future()
        if self.failure is not None:
            fut.set_exception(self.failure)
        else:
            self._single[rid] = fut
        return fut

    async def round_trip(self, requests: list[tuple[str, Req]]) -> list[Resp]:
        """Send every (id, request) at once, then await each one's single response, in order (a
        unary map's or a transformer's batch: one await per input, no round trip each). A failed
        stream fails them all; one is raised."""
        futures = [self.expect_one(rid) for rid, _ in requests]
        try:
            for _, request in requests:
                self.send(request)
            return [await fut for fut in futures]
        finally:
            for rid, _ in requests:
                self.forget(rid)
            for fut in futures:
                if fut.done() and not fut.cancelled():
                    fut.exception()  # retrieved, so asyncio does not log the others

    def forget(self, rid: str) -> None:
        self._waiting.pop(rid, None)
        self._single.pop(rid, None)

    async def _read(self) -> None:
        try:
            while True:
                resp = await self._call.read()
                if resp is grpc.aio.EOF:
                    if self._closing:
                        return
                    raise await self._ended(None)
                rid = self._id_of(resp)
                fut = self._single.pop(rid, None)
                if fut is not None:
                    if not fut.done():
                        fut.set_result(resp)
                    continue
                q = self._waiting.get(rid)
                if q is not None:
                    q.put_nowait(resp)
        except asyncio.CancelledError:
            self.failure = ProgramDied("the stream was closed")
            raise
        except grpc.aio.AioRpcError as exc:
            self.failure = await self._ended(exc)
        except (UdfError, ProgramDied) as exc:
            self.failure = exc
        for q in self._waiting.values():
            q.put_nowait(self.failure)
        for fut in self._single.values():
            if not fut.done():
                fut.set_exception(self.failure)
        self._single.clear()

    async def _ended(self, exc: grpc.aio.AioRpcError | None) -> BaseException:
        """What the end of the call means for its callers."""
        details = (exc.details() or "") if exc is not None else ""
        if exc is not None and exc.code() == grpc.StatusCode.INTERNAL and UDF_ERROR_MARK in details:
            return UdfError(details)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.program.exited.wait(), EXIT_WAIT_S)
        if self.program.returncode is not None:
            # A sync SDK server may exit before its error status reaches us; it logged the text.
            logged = [line for line in self.program.last_output().splitlines() if UDF_ERROR_MARK in line]
            if logged and self.program.returncode > 0:
                return UdfError(logged[-1][logged[-1].index(UDF_ERROR_MARK):])
            return self.program.died(" mid-stream")
        how = f"{exc.code().name}: {details}" if exc is not None else "the SDK ended the stream"
        return ProgramDied(f"numaflow program {self.program.launch.label!r}: stream failed ({how})")

    async def close(self) -> None:
        """End the request stream and let the SDK end the call: a cancelled call makes pynumaflow
        shut its server down, which a sidecar that outlives this worker must not do."""
        self._closing = True
        self._requests.put_nowait(_Closed())
        if self._reader is not None:
            with contextlib.suppress(asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(self._reader), CLOSE_WAIT_S)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._call is not None:
            self._call.cancel()
