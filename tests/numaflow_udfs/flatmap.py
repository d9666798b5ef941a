"""A pynumaflow async flatmap: split a comma-separated value into one message per word."""

from pynumaflow.mapper import Datum, MapAsyncServer, Message, Messages


async def handler(keys: list[str], datum: Datum) -> Messages:
    messages = Messages()
    for word in datum.value.decode().split(","):
        messages.append(Message(word.encode(), keys=keys))
    return messages


if __name__ == "__main__":
    MapAsyncServer(handler).start()
