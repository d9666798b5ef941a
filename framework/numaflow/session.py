"""A Numaflow program serving one vertex: started, its stream opened, and restarted after the
user's code raised (the SDK exits then, as in Numaflow where the pod restarts).

Inputs in flight when the SDK reports an error share the failed stream, so whose input raised is
unknown: `batched` re-sends each of them alone on the restarted program; the one that fails alone
gets the UdfError (→ its dead letter carries the SDK's text), the others their results. A program
that dies otherwise (killed, crashed) is ProgramDied: the vertex exits non-zero and its supervisor
starts it again, its unacked inputs are redelivered."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from framework.numaflow.program import NumaflowProgram, ProgramDied, ProgramLaunch
from framework.numaflow.serverinfo import ServerInfo
from framework.numaflow.stream import BidiStream, UdfError
from framework.runtime.bounded import HandlerTimeout, within

log = logging.getLogger("natsflow.numaflow")

T = TypeVar("T")
Item = TypeVar("Item")
OpenStream = Callable[[NumaflowProgram, ServerInfo], Awaitable[BidiStream[Any, Any]]]


Failed = UdfError | HandlerTimeout  # what one input's call may end in, besides its result


async def bounded(aw: Awaitable[T], timeout: float | None) -> T:
    return await (aw if timeout is None else within(aw, timeout))


class ProgramSession(Generic[T]):
    """`info_files`: the server-info files the program may write (the first one decides);
    `open_stream` opens the kind's stream on a ready program."""

    def __init__(self, launch: ProgramLaunch, info_files: tuple[str, ...], open_stream: OpenStream):
        self.launch = launch
        self.info_files = info_files
        self._open_stream = open_stream
        self.program: NumaflowProgram | None = None
        self.info: ServerInfo | None = None
        self.stream: BidiStream[Any, Any] | None = None
        self.generation = 0  # restarts so far
        self.restarts = 0
        self._restart_lock = asyncio.Lock()
        self.solo = asyncio.Lock()  # held while an input is tried alone after a UdfError

    async def start(self) -> ServerInfo:
        program = await NumaflowProgram.start(self.launch)
        self.program = program
        try:
            info = await program.ready(*self.info_files)
            self.stream = await self._open_stream(program, info)
        except BaseException:
            await program.stop()
            raise
        self.info = info
        return info

    async def recover(self, failed_generation: int) -> None:
        """Restart the program unless that was done already since `failed_generation`."""
        async with self._restart_lock:
            if self.generation != failed_generation:
                return
            old, stream = self.program, self.stream
            if stream is not None:
                await stream.close()
            if old is not None:
                await old.stop()
                if old.proc is None:
                    old.forget_server_info(*self.info_files)
            self.restarts += 1
            log.warning("numaflow program %r raised or did not answer in time; restarting it (restart %d)",
                        self.launch.label, self.restarts)
            await self.start()
            self.generation += 1

    def died(self) -> ProgramDied | None:
        """Why the program is gone, if it exited while nobody was calling it."""
        program = self.program
        if program is not None and program.returncode is not None and not program.stopping:
            return program.died(" while the vertex was waiting for input")
        return None

    async def batched(self, whole: Callable[[BidiStream[Any, Any], list[Item]], Awaitable[list[T]]],
                      alone: Callable[[BidiStream[Any, Any], Item], Awaitable[T]], items: list[Item],
                      timeout: float | None = None) -> list[T | Failed]:
        """`whole(stream, items)`: a result per item. After a UdfError, or no answer within
        `timeout` s, the program is restarted and each item is tried alone (`alone(stream, item)`):
        its result, or the UdfError it raised / HandlerTimeout (then the program restarts again)."""
        generation = self.generation
        try:
            assert self.stream is not None
            return list(await bounded(whole(self.stream, items), timeout))
        except (UdfError, HandlerTimeout):
            await self.recover(generation)
        out: list[T | Failed] = []
        for item in items:
            out.append(await self.alone(functools.partial(_with_item, alone, item), timeout))
        return out

    async def alone(self, attempt: Callable[[BidiStream[Any, Any]], Awaitable[T]],
                    timeout: float | None = None) -> T | Failed:
        """`attempt` with nothing else in flight: its result, or its UdfError / HandlerTimeout
        (then the program is restarted)."""
        async with self.solo:
            generation = self.generation
            try:
                assert self.stream is not None
                return await bounded(attempt(self.stream), timeout)
            except (UdfError, HandlerTimeout) as exc:
                await self.recover(generation)
                return exc

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.program is not None:
            await self.program.stop()


async def _with_item(alone: Callable[[BidiStream[Any, Any], Item], Awaitable[T]], item: Item,
                     stream: BidiStream[Any, Any]) -> T:
    return await alone(stream, item)
