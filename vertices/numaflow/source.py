"""`numaflow` source: a user-defined source written with a Numaflow SDK (`Sourcer`), run as a
program of the vertex and read over its `source.v1.Source` service.

One read at a time, as Numaflow's data plane does: ask for `readBatchSize` records (waiting up to
`readTimeout`), store them in the first buffer (`emit`), then ack their offsets to the program,
then read again; so the program acks only what is stored. A record's natsflow offset is
`<partition>:<offset>` (the SDK's offset bytes as text, hex when they are not UTF-8): the same
upstream record read again after a crash gets the same message id and JetStream drops the
duplicate within the buffer's duplicate window. What the program's `pending` says is exported as
`source_upstream_backlog{state="lag"}` (no KEDA trigger reads it yet: KEDA cannot ask the program).

A Sourcer that does not persist its acks (e.g. an in-memory counter) starts again from its
beginning when its program restarts: the records it gives again carry the offsets they had, and
are dropped as duplicates while still within the duplicate window; beyond it they are new messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2
from pynumaflow.proto.sourcer import source_pb2, source_pb2_grpc

from framework.connector import ConnectorContext, Emit, SourceRecord
from framework.numaflow import serverinfo
from framework.numaflow.convert import epoch_ms
from framework.numaflow.launch import SIDECARS_ENV, launch_of
from framework.numaflow.program import NumaflowProgram, ProgramDied
from framework.numaflow.stream import EXIT_WAIT_S, UDF_ERROR_MARK, UdfError
from vertices.numaflow.config import NumaflowSourceConfig

log = logging.getLogger("natsflow.connectors")

T = TypeVar("T")
SOCKET = "source.sock"
PENDING_EVERY_S = 2.0
IDLE_WAIT_S = 0.05  # after an empty read, for a source that answers at once with nothing


def offset_text(offset: source_pb2.Offset) -> str:
    try:
        raw = offset.offset.decode()
    except UnicodeDecodeError:
        raw = "0x" + offset.offset.hex()
    return f"{offset.partition_id}:{raw}"


class NumaflowSource:
    def __init__(self, config: NumaflowSourceConfig):
        self.cfg = config
        self.program: NumaflowProgram | None = None
        self.stub: source_pb2_grpc.SourceStub | None = None

    async def run(self, ctx: ConnectorContext, emit: Emit, try_emit: Emit) -> None:
        cfg = self.cfg
        if not cfg.command and not os.environ.get(SIDECARS_ENV):
            raise SystemExit(f"vertex {ctx.vertex!r}: source.numaflow.command: only a container is set, which runs "
                             "when rendered for Kubernetes; add a command to run it on this machine")
        env = {k: str(v) for k, v in cfg.env.items()}  # secretRefs are resolved before a connector is built
        launch = launch_of(cfg, env, ctx.base_dir, ctx.pipeline, ctx.vertex)
        self.program = program = await NumaflowProgram.start(launch)
        pending: asyncio.Task[None] | None = None
        try:
            await program.ready(serverinfo.SOURCER)
            self.stub = source_pb2_grpc.SourceStub(program.channel(SOCKET))
            partitions = await self._call(self.stub.PartitionsFn(empty_pb2.Empty()))
            log.info("numaflow source %s: partitions %s", ctx.vertex, list(partitions.result.partitions))
            pending = asyncio.create_task(self._report_pending(ctx))
            await self._read_loop(ctx, emit)
        finally:
            if pending is not None:
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            await program.stop()

    async def _read_loop(self, ctx: ConnectorContext, emit: Emit) -> None:
        assert self.stub is not None
        reads, acks = Duplex(self.stub.ReadFn), Duplex(self.stub.AckFn)
        try:
            await reads.open(source_pb2.ReadRequest(handshake=source_pb2.Handshake(sot=True)), self)
            await acks.open(source_pb2.AckRequest(handshake=source_pb2.Handshake(sot=True)), self)
            request = source_pb2.ReadRequest(request=source_pb2.ReadRequest.Request(
                num_records=self.cfg.read_batch_size, timeout_in_ms=max(1, int(self.cfg.read_timeout * 1000))))
            while not ctx.stopping.is_set():
                await ctx.until_running()
                if ctx.stopping.is_set():
                    break
                records, offsets = await self._read(reads, request)
                if not records:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ctx.stopping.wait(), IDLE_WAIT_S)
                    continue
                await emit(records)  # stored (or dead-lettered) before the source hears the ack
                await acks.ask(source_pb2.AckRequest(request=source_pb2.AckRequest.Request(offsets=offsets)), self)
        finally:
            await reads.close()
            await acks.close()

    async def _read(self, reads: Duplex, request: source_pb2.ReadRequest
                    ) -> tuple[list[SourceRecord], list[source_pb2.Offset]]:
        records: list[SourceRecord] = []
        offsets: list[source_pb2.Offset] = []
        reads.send(request)
        while True:
            resp = await reads.receive(self)
            status = resp.status
            if status.code == source_pb2.ReadResponse.Status.FAILURE:
                raise UdfError(f"numaflow source read failed: {status.msg or 'no message'}")
            if resp.HasField("result"):
                r = resp.result
                offset = offset_text(r.offset)
                records.append(SourceRecord(r.payload, offset, epoch_ms(r.event_time), list(r.keys) or None,
                                            dict(r.headers) or None, offset))
                offsets.append(r.offset)
            if status.eot:
                return records, offsets

    async def _report_pending(self, ctx: ConnectorContext) -> None:
        """The program's pending count as the lag, every few seconds (a negative count: unknown)."""
        assert self.stub is not None
        while True:
            try:
                resp = await self.stub.PendingFn(empty_pb2.Empty())
                if resp.result.count >= 0 and ctx.metrics is not None:
                    ctx.metrics.upstream_backlog("lag", resp.result.count)
            except grpc.aio.AioRpcError as exc:
                log.warning("numaflow source %s: pending failed (%s)", ctx.vertex, exc.details())
            await asyncio.sleep(PENDING_EVERY_S)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as exc:
            raise await self.failure(exc) from None

    async def failure(self, exc: grpc.aio.AioRpcError) -> Exception:
        """What a failed call means: the user's code raised (the SDK's text), or the program is gone.
        Either ends the worker; its supervisor starts it (and so the program) again."""
        details = exc.details() or ""
        if UDF_ERROR_MARK in details:
            return UdfError(details)
        assert self.program is not None
        with contextlib.suppress(TimeoutError):  # a broken socket is usually the program exiting
            await asyncio.wait_for(self.program.exited.wait(), EXIT_WAIT_S)
        if self.program.returncode is not None:
            return self.program.died(" mid-read")
        return ProgramDied(f"numaflow source {self.program.launch.label!r}: {exc.code().name}: {details}")


class Duplex:
    """One of the source's bidirectional streams (ReadFn, AckFn): handshake, then requests and
    their responses in turn."""

    def __init__(self, method: Callable[[AsyncIterator[Any]], Any]):
        self._requests: asyncio.Queue[object] = asyncio.Queue()
        self._call = method(self._outgoing())

    async def _outgoing(self) -> AsyncIterator[Any]:
        while True:
            item = await self._requests.get()
            if item is None:
                return
            yield item

    def send(self, request: object) -> None:
        self._requests.put_nowait(request)

    async def receive(self, source: NumaflowSource) -> Any:
        try:
            resp = await self._call.read()
        except grpc.aio.AioRpcError as exc:
            raise await source.failure(exc) from None
        if resp is grpc.aio.EOF:
            assert source.program is not None
            raise source.program.died(" (its stream ended)") if source.program.returncode is not None else \
                ProgramDied("numaflow source: the SDK ended its stream")
        return resp

    async def open(self, handshake: object, source: NumaflowSource) -> None:
        resp = await self.ask(handshake, source)
        if not (resp.HasField("handshake") and resp.handshake.sot):
            raise ProgramDied(f"numaflow source: no handshake in the first response ({resp!r})")

    async def ask(self, request: object, source: NumaflowSource) -> Any:
        self.send(request)
        return await self.receive(source)

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
