"""A pynumaflow map UDF that reads side input "mode" as Numaflow's documentation shows: the file
of that name under the SDK's side-input folder, re-read for every datum (it changes live)."""

import os

from pynumaflow.mapper import Datum, Mapper, MapServer, Message, Messages
from pynumaflow.sideinput import SIDE_INPUT_DIR_PATH


class AppendMode(Mapper):
    def handler(self, keys: list[str], datum: Datum) -> Messages:
        with open(os.path.join(SIDE_INPUT_DIR_PATH, "mode"), "rb") as f:
            mode = f.read()
        return Messages(Message(datum.value + b"|" + mode, keys=keys))


if __name__ == "__main__":
    MapServer(AppendMode()).start()
