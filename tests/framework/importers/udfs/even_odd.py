"""The even/odd map of Numaflow's conditional-forwarding example, written against pynumaflow's
public API as its documentation shows: even numbers tagged even-tag, odd ones odd-tag, anything
else dropped."""

from pynumaflow.mapper import Datum, Mapper, MapServer, Message, Messages


class EvenOdd(Mapper):
    def handler(self, keys: list[str], datum: Datum) -> Messages:
        text = datum.value.decode()
        if not text.isdigit():
            return Messages(Message.to_drop())
        tag = "even" if int(text) % 2 == 0 else "odd"
        return Messages(Message(datum.value, keys=[tag], tags=[f"{tag}-tag"]))


if __name__ == "__main__":
    MapServer(EvenOdd()).start()
