"""The UDF runner: result shapes, per-message error isolation, sync and async handlers."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from framework import Datum, Message
from framework.runtime.udf import HandlerResultError, MapRunner, normalize


def datum(i: int) -> Datum:
    return Datum(keys=["k"], value=str(i).encode(), event_time=datetime.now(timezone.utc), headers={}, id=str(i))


def test_normalize_shapes():
    m = Message(b"x")
    assert normalize(m) == [m]
    assert normalize(None) == []
    assert normalize([m, m]) == [m, m]
    assert normalize(x for x in [m]) == [m]
    with pytest.raises(HandlerResultError, match="handler returned bytes; expected Message"):
        normalize(b"raw")
    with pytest.raises(HandlerResultError, match="a list holding str"):
        normalize(["a"])


def test_drop_message():
    assert Message.drop().is_drop and not Message(b"x", tags=["a"]).is_drop


@pytest.mark.parametrize("is_async", [False, True])
async def test_runner_isolates_each_failure(is_async):
    def sync_fn(keys, d):
        if int(d.value) % 3 == 0:
            raise RuntimeError(f"bad {d.value.decode()}")
        return Message(d.value * 2, keys=keys)

    async def async_fn(keys, d):
        return sync_fn(keys, d)

    runner = MapRunner(async_fn if is_async else sync_fn)
    results = await runner.run([datum(i) for i in range(7)])
    runner.close()
    assert [str(r) if isinstance(r, Exception) else r[0].value for r in results] == [
        "bad 0", b"11", b"22", "bad 3", b"44", b"55", "bad 6"]


def test_batch_alignment_rules():
    from framework.runtime.udf import BatchMapRunner

    chunk = [datum(i) for i in range(3)]
    ok = BatchMapRunner.align(chunk, {"2": Message(b"c"), "0": Message(b"a"), "1": None})
    assert [[m.value for m in r] for r in ok] == [[b"a"], [], [b"c"]]
    with pytest.raises(HandlerResultError, match=r"returned 2 results for 3 inputs"):
        BatchMapRunner.align(chunk, [Message(b"a"), Message(b"b")])
    with pytest.raises(HandlerResultError, match=r"missing \['2'\], unexpected \['9'\]"):
        BatchMapRunner.align(chunk, {"0": None, "1": None, "9": None})
    with pytest.raises(HandlerResultError, match="expected a list"):
        BatchMapRunner.align(chunk, Message(b"x"))
