"""A keyed sum per window written with pynumaflow's Reducer, as its documentation shows: each input
is a number as text; each window and key gives its sum as text."""

from collections.abc import AsyncIterable

from pynumaflow.reducer import Datum, Message, Messages, Metadata, ReduceAsyncServer, Reducer


class Sum(Reducer):
    async def handler(self, keys: list[str], datums: AsyncIterable[Datum], md: Metadata) -> Messages:
        total = 0
        async for datum in datums:
            total += int(datum.value)
        return Messages(Message(str(total).encode(), keys=keys))


if __name__ == "__main__":
    ReduceAsyncServer(Sum).start()
