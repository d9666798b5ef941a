"""A pynumaflow map stream: value "word:n" streams n messages "word-0" ... "word-(n-1)"; "boom"
raises after its first message."""

from collections.abc import AsyncIterable

from pynumaflow.mapstreamer import Datum, MapStreamAsyncServer, MapStreamer, Message


class Repeat(MapStreamer):
    async def handler(self, keys: list[str], datum: Datum) -> AsyncIterable[Message]:
        if datum.value == b"boom":
            yield Message(b"boom-0", keys=keys)
            raise ValueError("the stream of 'boom' broke")
        word, _, count = datum.value.decode().partition(":")
        for i in range(int(count)):
            yield Message(f"{word}-{i}".encode(), keys=keys)


if __name__ == "__main__":
    MapStreamAsyncServer(Repeat()).start()
