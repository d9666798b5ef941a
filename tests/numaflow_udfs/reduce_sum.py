"""A keyed fixed-window sum written with pynumaflow's Reducer, as its documentation shows; it knows
nothing of natsflow. Each input is JSON {"v": n}; each window and key gives one JSON result."""

import json
from collections.abc import AsyncIterable

from pynumaflow.reducer import Datum, Message, Messages, Metadata, ReduceAsyncServer, Reducer


class WindowSum(Reducer):
    async def handler(self, keys: list[str], datums: AsyncIterable[Datum], md: Metadata) -> Messages:
        count = total = 0
        async for d in datums:
            count += 1
            total += json.loads(d.value)["v"]
        w = md.interval_window
        doc = {"keys": keys, "start": int(w.start.timestamp()), "end": int(w.end.timestamp()), "count": count,
               "sum": total}
        return Messages(Message(json.dumps(doc).encode(), keys=keys))


if __name__ == "__main__":
    ReduceAsyncServer(WindowSum).start()
