"""Handlers of the ordered-mode tests (tests/framework/test_ordered.py)."""

from __future__ import annotations

import asyncio
import os

from framework.sdk import Datum, Message


async def slow_echo(keys: list[str], datum: Datum) -> Message:
    """The input again, after $ORDERED_MAP_DELAY seconds (a batch's calls wait together)."""
    await asyncio.sleep(float(os.environ.get("ORDERED_MAP_DELAY", "0")))
    return Message(datum.value, keys=keys)


def record_arrivals(datums: list[Datum]) -> None:
    """A sink that appends `<key> <value>` per datum to $ORDERED_SINK_FILE, in the order written."""
    with open(os.environ["ORDERED_SINK_FILE"], "a") as f:
        f.write("".join(f"{d.keys[0]} {d.value.decode()}\n" for d in datums))
