"""A pynumaflow ReduceStreamer, as its documentation shows: it puts out a running count every 4
datums of a window and key, and the final count at the window's end. A datum of value "boom"
raises (to test SDK errors)."""

from collections.abc import AsyncIterable

from pynumaflow.reducestreamer import Datum, Message, Metadata, ReduceStreamAsyncServer, ReduceStreamer
from pynumaflow.shared.asynciter import NonBlockingIterator


class RunningCount(ReduceStreamer):
    async def handler(self, keys: list[str], datums: AsyncIterable[Datum], output: NonBlockingIterator,
                      md: Metadata) -> None:
        count = 0
        async for d in datums:
            if d.value == b"boom":
                raise ValueError(f"cannot count {d.value!r} for {keys}")
            count += 1
            if count % 4 == 0:
                await output.put(Message(f"partial:{count}".encode(), keys=keys))
        await output.put(Message(f"final:{count}".encode(), keys=keys))


if __name__ == "__main__":
    ReduceStreamAsyncServer(RunningCount).start()
