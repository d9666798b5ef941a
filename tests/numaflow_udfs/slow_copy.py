"""A pynumaflow sync map that copies its input after a few milliseconds (for the kill tests);
"hang" never returns (for the timeout test)."""

import time

from pynumaflow.mapper import Datum, Mapper, MapServer, Message, Messages


class SlowCopy(Mapper):
    def handler(self, keys: list[str], datum: Datum) -> Messages:
        time.sleep(3600 if datum.value == b"hang" else 0.004)
        return Messages(Message(datum.value, keys=keys))


if __name__ == "__main__":
    MapServer(SlowCopy()).start()
