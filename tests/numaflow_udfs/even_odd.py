"""A pynumaflow map UDF as Numaflow's documentation writes it: tag even numbers "even-tag", odd
ones "odd-tag", drop what is not a number, and fail on "boom" (to test SDK errors)."""

from pynumaflow.mapper import Datum, Mapper, MapServer, Message, Messages


class EvenOdd(Mapper):
    def handler(self, keys: list[str], datum: Datum) -> Messages:
        text = datum.value.decode()
        if text == "boom":
            raise ValueError(f"cannot map {text!r}")
        messages = Messages()
        if not text.lstrip("-").isdigit():
            messages.append(Message.to_drop())
        elif int(text) % 2 == 0:
            messages.append(Message(datum.value, keys=["even"], tags=["even-tag"]))
        else:
            messages.append(Message(datum.value, keys=["odd"], tags=["odd-tag"]))
        return messages


if __name__ == "__main__":
    MapServer(EvenOdd()).start()
