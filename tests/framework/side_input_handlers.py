"""Handlers the side-input tests run inside real manager and vertex processes."""

from __future__ import annotations

import os
from pathlib import Path

from framework import Datum, Message, side_input, side_input_json


def read_mode() -> str:
    """Side input: the text of $SIDE_INPUT_FILE (the test rewrites it; a missing file fails the run)."""
    return Path(os.environ["SIDE_INPUT_FILE"]).read_text().strip()


def limits() -> dict:
    return {"max": int(Path(os.environ["SIDE_INPUT_FILE"]).read_text())}


def append_mode(keys: list[str], datum: Datum) -> Message:
    return Message(datum.value + b"|" + side_input("mode"))


def append_limit(keys: list[str], datum: Datum) -> Message:
    return Message(datum.value + b"|" + str(side_input_json("limits")["max"]).encode())
