"""Handlers the end-to-end tests run inside real vertex processes."""

from __future__ import annotations

import asyncio
import json
import os
import threading
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


# ---- poison pills (tests/framework/test_poison.py) -------------------------------------------

SERVER_MAX_PAYLOAD = 1024 * 1024  # nats-server's default max_payload


def unpublishable_some(keys: list[str], datum: Datum) -> list[Message]:
    """flatmap whose result for some inputs cannot be published: n % 50 == 7 one output that fits
    the payload limit alone but not with its headers, == 8 a header name outside the token set,
    == 9 a second output far over the limit, == 10 a header value that is not text."""
    n = seq(datum)
    if n % 50 == 7:
        return [Message(b"x" * (SERVER_MAX_PAYLOAD - 20))]
    if n % 50 == 8:
        return [Message(datum.value, headers={"X(bad)": "1"})]
    if n % 50 == 9:
        return [Message(datum.value), Message(b"y" * (SERVER_MAX_PAYLOAD + 100))]
    if n % 50 == 10:
        return [Message(datum.value, headers={"X-Count": 5})]  # type: ignore[dict-item]
    return [Message(datum.value)]


def _hangs(datum: Datum) -> bool:
    return seq(datum) in {int(s) for s in os.environ.get("HANG_SEQS", "").split(",") if s}


def hang_some(keys: list[str], datum: Datum) -> Message:
    """map that never returns for the inputs listed in $HANG_SEQS."""
    if _hangs(datum):
        threading.Event().wait()
    return Message(datum.value)


async def async_hang_some(keys: list[str], datum: Datum) -> Message:
    if _hangs(datum):
        await asyncio.Event().wait()
    return Message(datum.value)


def batch_hang_some(datums: list[Datum]) -> list[Message]:
    """batchMap whose call never returns when the chunk holds an input listed in $HANG_SEQS."""
    if any(_hangs(d) for d in datums):
        threading.Event().wait()
    return [Message(d.value) for d in datums]


async def stream_hang_some(keys: list[str], datum: Datum):
    """mapStream: yields one message, then never yields again for the inputs in $HANG_SEQS."""
    yield Message(datum.value)
    if _hangs(datum):
        await asyncio.Event().wait()


_sink_calls = 0


def sink_hang_first(datums: list[Datum]) -> None:
    """udsink whose first write never returns; later writes record the ids in $SINK_FILE."""
    global _sink_calls
    _sink_calls += 1
    if _sink_calls == 1:
        threading.Event().wait()
    with open(os.environ["SINK_FILE"], "a") as f:
        f.write("".join(d.id + "\n" for d in datums))


def window_sum_hang_b(keys: list[str], datums, window) -> Message:
    """reduce that never returns for key 'b'."""
    if keys == ["b"]:
        threading.Event().wait()
    return window_sum(keys, datums, window)
