"""A pynumaflow sink that appends each value to the file named by SINK_FILE. Values starting with
"fb" ask for the fallback sink, "ons" succeed with an on-success message, "fail-once" fail the
first time they are seen (a FAILURE response: natsflow retries them); "crash-once" raises the
first time (a marker file remembers it across the restart that follows)."""

import os
from collections.abc import AsyncIterable

from pynumaflow.sinker import Datum, Message, Response, Responses, SinkAsyncServer, Sinker


class FileSink(Sinker):
    def __init__(self) -> None:
        self.path = os.environ["SINK_FILE"]
        self.failed: set[bytes] = set()

    async def handler(self, datums: AsyncIterable[Datum]) -> Responses:
        responses = Responses()
        with open(self.path, "a") as out:
            async for d in datums:
                if d.value == b"crash-once" and not os.path.exists(self.path + ".crashed"):
                    open(self.path + ".crashed", "w").close()
                    raise RuntimeError("the sink fell over on 'crash-once'")
                if d.value.startswith(b"fb"):
                    responses.append(Response.as_fallback(d.id))
                elif d.value.startswith(b"ons"):
                    out.write(d.value.decode() + "\n")
                    responses.append(Response.as_on_success(d.id, Message(b"done:" + d.value, keys=["ok"])))
                elif d.value.startswith(b"fail-once") and d.value not in self.failed:
                    self.failed.add(d.value)
                    responses.append(Response.as_failure(d.id, f"not now: {d.value.decode()}"))
                else:
                    out.write(d.value.decode() + "\n")
                    responses.append(Response.as_success(d.id))
        return responses


if __name__ == "__main__":
    SinkAsyncServer(FileSink()).start()
