"""What the Numaflow SDKs send and natsflow's envelope: results as `Message`s (the SDK's DROP tag
becomes natsflow's drop), times as protobuf Timestamps, and an SDK error as `NumaflowError`
carrying the SDK's error text (the dead letter's reason)."""

from __future__ import annotations

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from framework.sdk import Message

# The tag a Numaflow SDK puts on `Message.to_drop()` (the same in every SDK).
SDK_DROP = "U+005C__DROP__"


class NumaflowError(RuntimeError):
    """A call into the SDK program failed; the text is what the SDK reported."""

    @classmethod
    def of(cls, exc: grpc.aio.AioRpcError) -> NumaflowError:
        return cls(f"numaflow {exc.code().name}: {exc.details()}")


def from_sdk(value: bytes, keys: list[str], tags: list[str]) -> Message:
    if SDK_DROP in tags:
        return Message.drop()
    return Message(value, keys=keys, tags=tags or None)


def timestamp(ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(ms)
    return ts
