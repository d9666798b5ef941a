"""Handlers the end-to-end tests run inside real vertex processes."""

from __future__ import annotations

import asyncio
import json
import os
import time

from framework import Datum, Message


def identity(keys: list[str], datum: Datum) -> Message:
    return Message(datum.value)


async def async_identity(keys: list[str], datum: Datum) -> Message:
    await asyncio.sleep(0)
    return Message(datum.value)


def seq(datum: Datum) -> int:
    return json.loads(datum.value)["seq"]


def tag_parity(keys: list[str], datum: Datum) -> Message:
    """Tags: 'even'/'odd', plus 'three' for multiples of 3."""
    n = seq(datum)
    tags = ["even" if n % 2 == 0 else "odd"]
    if n % 3 == 0:
        tags.append("three")
    return Message(datum.value, tags=tags)


def drop_odd(keys: list[str], datum: Datum) -> Message:
    return Message.drop() if seq(datum) % 2 else Message(datum.value)


def split_words(keys: list[str], datum: Datum) -> list[Message]:
    """flatmap: one output per word; zero for an empty text."""
    n = seq(datum)
    return [Message(f"{n}:{i}".encode(), keys=[str(i)]) for i in range(n % 3)]


def fail_multiples_of_7(keys: list[str], datum: Datum) -> Message:
    n = seq(datum)
    if n % 7 == 0:
        raise ValueError(f"cannot score item {n}")
    return Message(datum.value)


def bad_return(keys: list[str], datum: Datum):
    return {"not": "a message"}


def slow_sink(datums: list[Datum]) -> None:
    time.sleep(float(os.environ.get("SLOW_SINK_SECONDS", "0.05")))


def slow_file_sink(datums: list[Datum]) -> None:
    """A slow sink that records every id it wrote in $SINK_FILE (one line each)."""
    time.sleep(float(os.environ.get("SLOW_SINK_SECONDS", "0.05")))
    with open(os.environ["SINK_FILE"], "a") as f:
        f.write("".join(d.id + "\n" for d in datums))


def batch_double(datums: list[Datum]) -> list[Message]:
    """batchMap, results in input order; records the batch size in a header."""
    return [Message(d.value, headers={"batch-size": str(len(datums))}) for d in datums]


async def batch_by_id(datums: list[Datum]) -> dict[str, Message]:
    return {d.id: Message(d.value) for d in reversed(datums)}


def batch_short(datums: list[Datum]) -> list[Message]:
    """Violates the contract: one result too few."""
    return [Message(d.value) for d in datums[1:]]


async def stream_three(keys: list[str], datum: Datum):
    """mapStream: three outputs per input, produced one after another."""
    n = seq(datum)
    for part in range(3):
        await asyncio.sleep(0)
        yield Message(f"{n}:{part}".encode())


def event_time_from_seq(keys: list[str], datum: Datum) -> int:
    """eventTime extractor: event time = 2024-01-01T00:00:00Z + seq seconds."""
    return 1_704_067_200_000 + seq(datum) * 1000


def window_sum(keys: list[str], datums, window) -> Message:
    """reduce: count and sum of {"v": n} payloads in the window."""
    values = [json.loads(d.value)["v"] for d in datums]
    body = {"keys": keys, "start": int(window.start.timestamp()), "end": int(window.end.timestamp()),
            "count": len(values), "sum": sum(values)}
    return Message(json.dumps(body, sort_keys=True).encode())


async def window_sum_stream(keys: list[str], datums, window):
    """reduce as an async generator: the same result as window_sum, yielded."""
    yield window_sum(keys, datums, window)


class WindowSum:
    """reduce as a class: instantiated per window, then called."""

    def __call__(self, keys: list[str], datums, window) -> Message:
        return window_sum(keys, datums, window)


def slow_identity(keys: list[str], datum: Datum) -> Message:
    """A UDF one replica cannot keep up with (CPU-free: it waits, like a remote model call)."""
    time.sleep(float(os.environ.get("SLOW_MAP_SECONDS", "0.02")))
    return Message(datum.value)


def version_a(keys: list[str], datum: Datum) -> Message:
    return Message(json.dumps({"seq": seq(datum), "version": "a"}).encode())


def version_b(keys: list[str], datum: Datum) -> Message:
    return Message(json.dumps({"seq": seq(datum), "version": "b"}).encode())


def window_values(keys: list[str], datums, window) -> Message:
    """reduce: the window and the payloads in it (any bytes, as text)."""
    body = {"start": int(window.start.timestamp() * 1000), "values": sorted(d.value.decode() for d in datums)}
    return Message(json.dumps(body).encode())


def fan_two(keys: list[str], datum: Datum) -> list[Message]:
    """flatmap: two outputs per input, `<seq>:0` and `<seq>:1`."""
    n = seq(datum)
    return [Message(f"{n}:0".encode()), Message(f"{n}:1".encode())]
